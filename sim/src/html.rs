//! `report.html`: one self-contained page per run — no scripts, no external
//! files, inline SVG — so it opens from a CI artifact or an e-mail as is.
//!
//! The plots are drawn from the run's trace, the same bytes whose SHA-256 is
//! the `trace_hash`, so the page shows what the verdicts were judged on:
//! - the latency CDF of every first delivery to an app (send → app);
//! - deliveries over time: messages shown to apps, delivery frames the
//!   server sent (first deliveries, redeliveries and duplicates alike) and
//!   frames the network dropped, per time bin;
//! - a sequence diagram of one message (the slowest to arrive): its send, the
//!   frames its sender and recipient exchanged with the server until its last
//!   tick, the app delivery and each status change.
//!
//! Like the other report files, the page is a function of the outcome only.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::run::{RunOutcome, VerdictState};
use crate::scenario::units::format_duration_ms;

/// Time bins of the deliveries-over-time plot: fine enough to see a
/// partition or a crash, coarse enough that each bin has a count to show.
const TIME_BINS: u64 = 60;

/// Most rows of the sequence diagram: a message that waited out a long
/// partition crosses thousands of frames; the first ones tell its story.
const SEQUENCE_ROWS_MAX: usize = 60;

/// Frame kinds that belong to a message's path (the rest — prekeys,
/// presence, handshakes — would crowd the diagram).
const PATH_KINDS: &[&str] = &["send", "server-ack", "deliver-envelope", "delivery-ack", "receipt", "deliver-receipt"];

/// A frame this close after a phase's end still belongs to it (an ack
/// leaves right after the delivery it acknowledges).
const PHASE_SLACK_MS: u64 = 50;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 260.0;
const MARGIN: f64 = 48.0;

/// One trace line. The strings borrow from the trace's bytes (unless a JSON
/// escape needs a copy) and the `key=value` fields are looked up in place:
/// a long run has millions of lines, and an owned copy and a field map for
/// each made this page take about a tenth of the run.
#[derive(serde::Deserialize)]
struct Line<'a> {
    at_ms: u64,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    detail: Cow<'a, str>,
}

impl Line<'_> {
    /// The value of `key=` in the detail (the last one, should a key repeat).
    fn get(&self, key: &str) -> Option<&str> {
        self.detail.rsplit(' ').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// The page for `o`.
pub fn html(o: &RunOutcome) -> String {
    // Sized up front: collecting a long run's million lines by doubling
    // held up to twice their size (and copied them) at the run's peak.
    let count = o.trace_jsonl.iter().filter(|b| **b == b'\n').count() + 1;
    let mut lines: Vec<Line<'_>> = Vec::with_capacity(count);
    lines.extend(o.trace_jsonl.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice(l).ok()));

    let mut s = String::new();
    let verdict = if o.passed { "PASSED" } else { "FAILED" };
    let _ = write!(
        s,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} seed {} — {verdict}</title>\n<style>{}</style></head><body>\n",
        esc(&o.scenario),
        o.seed,
        STYLE
    );
    let _ = writeln!(
        s,
        "<h1>{} — seed {} — <span class=\"{}\">{verdict}</span></h1>",
        esc(&o.scenario),
        o.seed,
        verdict.to_lowercase()
    );
    let _ = writeln!(
        s,
        "<p>Driver <code>{}</code>, bluetick-sim {} (commit <code>{}</code>). trace_hash <code>{}</code>, {} trace lines.</p>",
        esc(&o.driver),
        esc(&o.version),
        esc(&o.commit),
        esc(&o.trace_hash),
        o.trace_lines
    );
    let _ = writeln!(s, "<p>Reproduce: <code>{}</code></p>", esc(&o.reproduce));
    verdict_table(&mut s, o);

    let sends = sends(&lines);
    let latencies = latencies(&lines, &sends);
    let _ = writeln!(s, "<h2>Latency (send → first delivery to the app)</h2>");
    s += &latency_cdf(&latencies);
    let _ = writeln!(s, "<h2>Deliveries over time</h2>");
    s += &over_time(&lines);
    let _ = writeln!(s, "<h2>One message's path</h2>");
    s += &sequence(&lines, &sends, &latencies);
    s += "</body></html>\n";
    s
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}\
.passed,.held{color:#176e2c}.failed,.violated{color:#b00020;font-weight:bold}.not-checked{color:#777}\
svg{background:#fafafa;border:1px solid #ddd}code{background:#f2f2f2;padding:0 .2rem}";

fn esc(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn verdict_table(s: &mut String, o: &RunOutcome) {
    let _ = writeln!(s, "<h2>Invariants</h2><table><tr><th>invariant</th><th>verdict</th><th>meaning</th></tr>");
    for v in &o.verdicts {
        let (class, word) = match v.state {
            VerdictState::Held => ("held", "held".to_owned()),
            VerdictState::Violated => ("violated", format!("VIOLATED ({})", v.violations)),
            VerdictState::NotChecked => ("not-checked", "not checked".to_owned()),
        };
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td class=\"{class}\">{word}</td><td>{}</td></tr>",
            esc(&v.invariant),
            esc(&v.meaning)
        );
    }
    let _ = writeln!(s, "</table>");
    for v in o.violated() {
        let _ = writeln!(s, "<h3>Violation: {}</h3><ul>", esc(&v.invariant));
        for f in &v.first {
            let at = f.at_ms.saturating_sub(bluetick_core::world::EPOCH_MS);
            let _ = writeln!(s, "<li>at {}: {}</li>", format_duration_ms(at), esc(&f.detail));
        }
        let _ = writeln!(s, "</ul>");
    }
    if !o.guards.is_empty() {
        let _ = writeln!(s, "<h2>Guards</h2><table><tr><th>guard</th><th>met</th><th>seen</th></tr>");
        for g in &o.guards {
            let class = if g.passed {
                "held"
            } else if g.required {
                "violated"
            } else {
                "not-checked"
            };
            let word = if g.passed { "yes" } else { "no" };
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td class=\"{class}\">{word}</td><td>{}</td></tr>",
                esc(&g.name),
                esc(&g.detail)
            );
        }
        let _ = writeln!(s, "</table>");
    }
}

/// A trace value as a map key. Ids and user names are short, and packed
/// into an integer they compare without going back to the trace: as `&str`
/// keys, every comparison read a far part of a trace of hundreds of
/// megabytes, and the maps below cost more than parsing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    /// Up to 15 bytes, then zeros, the length in the last byte.
    Packed(u128),
    Long(&'a str),
}

fn key(s: &str) -> Key<'_> {
    if s.len() >= 16 {
        return Key::Long(s);
    }
    let mut b = [0u8; 16];
    b[..s.len()].copy_from_slice(s.as_bytes());
    b[15] = s.len() as u8;
    Key::Packed(u128::from_le_bytes(b))
}

/// Send time and sender of each message id.
fn sends<'a>(lines: &'a [Line<'_>]) -> BTreeMap<Key<'a>, (u64, &'a str)> {
    let mut out = BTreeMap::new();
    for l in lines.iter().filter(|l| l.event == "send") {
        if let (Some(id), Some(from)) = (l.get("id"), l.get("from")) {
            out.entry(key(id)).or_insert((l.at_ms, from));
        }
    }
    out
}

/// A first delivery to an app: message id, recipient, latency ms, when.
struct Delivery<'a> {
    id: &'a str,
    user: &'a str,
    latency_ms: u64,
}

fn latencies<'a>(lines: &'a [Line<'_>], sends: &BTreeMap<Key<'a>, (u64, &'a str)>) -> Vec<Delivery<'a>> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for l in lines.iter().filter(|l| l.event == "app" && l.get("event") == Some("message")) {
        let (Some(id), Some(user)) = (l.get("id"), l.get("user")) else { continue };
        let Some((sent, _)) = sends.get(&key(id)) else { continue };
        if seen.insert((key(id), key(user))) {
            out.push(Delivery { id, user, latency_ms: l.at_ms.saturating_sub(*sent) });
        }
    }
    out
}

fn empty_plot(what: &str) -> String {
    format!("<p><em>No {what} in this run.</em></p>\n")
}

fn svg_open(s: &mut String, label: &str) {
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\" font-size=\"11\">",
        esc(label)
    );
}

/// Maps a value in `0..=max` onto the plot's x range.
fn x_of(v: f64, max: f64) -> f64 {
    MARGIN + (WIDTH - 2.0 * MARGIN) * if max > 0.0 { v / max } else { 0.0 }
}

/// Maps a value in `0..=max` onto the plot's y range (up is more).
fn y_of(v: f64, max: f64) -> f64 {
    HEIGHT - MARGIN - (HEIGHT - 2.0 * MARGIN) * if max > 0.0 { v / max } else { 0.0 }
}

fn axes(s: &mut String, x_label: &str, x_max: f64, x_fmt: &dyn Fn(f64) -> String, y_label: &str, y_max: f64) {
    let (x0, y0, x1, y1) = (MARGIN, HEIGHT - MARGIN, WIDTH - MARGIN, MARGIN);
    let _ = writeln!(s, "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#333\"/>");
    let _ = writeln!(s, "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"#333\"/>");
    for i in 0..=4u32 {
        let f = f64::from(i) / 4.0;
        let x = x_of(f * x_max, x_max);
        let y = y_of(f * y_max, y_max);
        let _ =
            writeln!(s, "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>", y0 + 14.0, x_fmt(f * x_max));
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            x0 - 4.0,
            y + 4.0,
            trim_num(f * y_max)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        WIDTH / 2.0,
        HEIGHT - 10.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        "<text x=\"12\" y=\"{:.1}\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">{}</text>",
        HEIGHT / 2.0,
        HEIGHT / 2.0,
        esc(y_label)
    );
}

fn trim_num(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn latency_cdf(d: &[Delivery<'_>]) -> String {
    if d.is_empty() {
        return empty_plot("deliveries to apps");
    }
    let mut v: Vec<u64> = d.iter().map(|d| d.latency_ms).collect();
    v.sort_unstable();
    let max = v.last().copied().unwrap_or(0).max(1) as f64;
    let n = v.len() as f64;
    let mut s = String::new();
    svg_open(&mut s, "latency CDF");
    axes(&mut s, "latency (ms)", max, &|x| format!("{x:.0}"), "fraction delivered", 1.0);
    let mut points = format!("{:.1},{:.1}", x_of(0.0, max), y_of(0.0, 1.0));
    for (i, lat) in v.iter().enumerate() {
        let x = x_of(*lat as f64, max);
        let _ = write!(points, " {x:.1},{:.1} {x:.1},{:.1}", y_of(i as f64 / n, 1.0), y_of((i + 1) as f64 / n, 1.0));
    }
    let _ = writeln!(s, "<polyline fill=\"none\" stroke=\"#1565c0\" stroke-width=\"1.5\" points=\"{points}\"/>");
    for (q, label) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
        let idx = ((n * q).ceil() as usize).clamp(1, v.len()) - 1;
        let lat = v.get(idx).copied().unwrap_or(0);
        let (x, y) = (x_of(lat as f64, max), y_of(q, 1.0));
        // Labels near the right edge are drawn leftwards so they stay inside.
        let (tx, anchor) = if x > WIDTH - 2.0 * MARGIN - 40.0 { (x - 5.0, "end") } else { (x + 5.0, "start") };
        let _ = writeln!(
            s,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"#b00020\"/><text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{label} {lat} ms</text>",
            y + 12.0
        );
    }
    s += "</svg>\n";
    let _ = writeln!(s, "<p>{} first deliveries to apps.</p>", v.len());
    s
}

fn over_time(lines: &[Line<'_>]) -> String {
    let (Some(first), Some(last)) = (lines.first(), lines.last()) else { return empty_plot("trace events") };
    let (t0, t1) = (first.at_ms, last.at_ms.max(first.at_ms + 1));
    let bin_ms = (t1 - t0).div_ceil(TIME_BINS).max(1);
    let bins = usize::try_from((t1 - t0) / bin_ms + 1).unwrap_or(1);
    let mut series: [(&str, &str, Vec<u64>); 3] = [
        ("messages shown to apps", "#176e2c", vec![0; bins]),
        ("delivery frames sent by the server (incl. redeliveries, duplicates)", "#1565c0", vec![0; bins]),
        ("frames dropped by the network", "#b00020", vec![0; bins]),
    ];
    for l in lines {
        let b = usize::try_from((l.at_ms - t0) / bin_ms).unwrap_or(0).min(bins - 1);
        let slot = match l.event.as_ref() {
            "app" if l.get("event") == Some("message") => Some(0),
            "frame" if l.get("fate") == Some("dropped") => Some(2),
            "frame" if l.get("kind") == Some("deliver-envelope") && l.get("dir") == Some("to-client") => Some(1),
            _ => None,
        };
        if let Some(i) = slot {
            if let Some(c) = series[i].2.get_mut(b) {
                *c += 1;
            }
        }
    }
    let y_max = series.iter().flat_map(|s| s.2.iter()).copied().max().unwrap_or(0).max(1) as f64;
    let x_max = (bins as u64 * bin_ms) as f64;
    let mut s = String::new();
    svg_open(&mut s, "deliveries over time");
    axes(
        &mut s,
        &format!("simulated time (bins of {})", format_duration_ms(bin_ms)),
        x_max,
        &|x| format_duration_ms(x as u64),
        "per bin",
        y_max,
    );
    for (i, (name, colour, counts)) in series.iter().enumerate() {
        let points: Vec<String> = counts
            .iter()
            .enumerate()
            .map(|(b, c)| {
                format!("{:.1},{:.1}", x_of(((b as u64) * bin_ms + bin_ms / 2) as f64, x_max), y_of(*c as f64, y_max))
            })
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
        let ly = MARGIN - 30.0 + 11.0 * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"3\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{} ({} in all)</text>",
            MARGIN + 10.0,
            ly - 3.0,
            MARGIN + 24.0,
            ly + 1.0,
            esc(name),
            counts.iter().sum::<u64>()
        );
    }
    s += "</svg>\n";
    s
}

fn sequence(lines: &[Line<'_>], sends: &BTreeMap<Key<'_>, (u64, &str)>, d: &[Delivery<'_>]) -> String {
    // The slowest message is the one a reader most wants to see explained.
    let Some(slow) = d.iter().max_by_key(|d| (d.latency_ms, std::cmp::Reverse((d.id, d.user)))) else {
        return empty_plot("delivered messages");
    };
    let Some(&(sent_at, sender)) = sends.get(&key(slow.id)) else { return empty_plot("delivered messages") };
    let recipient = slow.user;
    // The message's last tick and its first `Sent`, in one pass of the trace.
    let (mut last_tick, mut sent_tick) = (None, None);
    for l in
        lines.iter().filter(|l| l.event == "status" && l.get("id") == Some(slow.id) && l.get("peer") == Some(recipient))
    {
        last_tick = last_tick.max(Some(l.at_ms));
        if sent_tick.is_none() && l.get("status") == Some("Sent") {
            sent_tick = Some(l.at_ms);
        }
    }
    let last_status = last_tick.unwrap_or(sent_at + slow.latency_ms);
    let app_at = sent_at + slow.latency_ms;
    // The server cannot deliver what it has not received: the recipient's
    // delivery phase starts with the sender's first send frame.
    let first_send_frame = lines
        .iter()
        .find(|l| {
            l.at_ms >= sent_at && l.event == "frame" && l.get("user") == Some(sender) && l.get("kind") == Some("send")
        })
        .map_or(sent_at, |l| l.at_ms);
    let server_acked = sent_tick.unwrap_or(app_at).min(app_at);
    // Frames carry no message id in the trace, so each phase only shows the
    // frames that can belong to it: the sender's sends until the server-ack,
    // the recipient's deliveries and acks until the app has it, then the
    // receipts both ways until the last tick.
    let phase_of = |user_is_sender: bool, kind: &str, at: u64| match (user_is_sender, kind) {
        (true, "send" | "server-ack") => at <= server_acked,
        (false, "deliver-envelope" | "delivery-ack") => at >= first_send_frame && at <= app_at + PHASE_SLACK_MS,
        (false, "receipt" | "server-ack") | (true, "deliver-receipt" | "delivery-ack") => at + PHASE_SLACK_MS >= app_at,
        _ => false,
    };
    let mut rows: Vec<(u64, String, Arrow)> = Vec::new();
    for l in lines.iter().filter(|l| l.at_ms >= sent_at && l.at_ms <= last_status) {
        let user = l.get("user").unwrap_or_default();
        let lane = if user == sender {
            Lane::Sender
        } else if user == recipient {
            Lane::Recipient
        } else {
            // Third devices' frames are skipped below; a server crash is
            // drawn on the server's lane.
            Lane::Server
        };
        match l.event.as_ref() {
            "frame"
                if PATH_KINDS.contains(&l.get("kind").unwrap_or(""))
                    && lane != Lane::Server
                    && phase_of(lane == Lane::Sender, l.get("kind").unwrap_or(""), l.at_ms) =>
            {
                let kind = l.get("kind").unwrap_or_default();
                let to_server = l.get("dir") == Some("to-server");
                let dropped = l.get("fate") == Some("dropped");
                let (from, to) = if to_server { (lane, Lane::Server) } else { (Lane::Server, lane) };
                let delay = l.get("delay").and_then(|d| d.parse::<u64>().ok());
                let label = match (dropped, delay) {
                    (true, _) => format!("{kind} ✗ dropped"),
                    (false, Some(d)) => format!("{kind} ({d} ms)"),
                    (false, None) => kind.to_owned(),
                };
                rows.push((l.at_ms, label, Arrow::Frame { from, to, dropped }));
            }
            "send" if l.get("id") == Some(slow.id) => {
                rows.push((l.at_ms, "app sends".to_owned(), Arrow::Note(Lane::Sender)))
            }
            "app" if l.get("id") == Some(slow.id) && user == recipient => {
                rows.push((l.at_ms, "shown to the app".to_owned(), Arrow::Note(Lane::Recipient)));
            }
            "status" if l.get("id") == Some(slow.id) && l.get("peer") == Some(recipient) => {
                let st = l.get("status").unwrap_or_default();
                rows.push((l.at_ms, format!("tick: {st}"), Arrow::Note(Lane::Sender)));
            }
            "crash-client" | "crash-server" | "disconnect" | "connect" | "online"
                if lane != Lane::Server || l.event == "crash-server" =>
            {
                rows.push((l.at_ms, l.event.to_string(), Arrow::Note(lane)));
            }
            _ => {}
        }
    }
    let total = rows.len();
    let rows = thin(rows);
    let row_h = 18.0;
    let height = 70.0 + row_h * rows.len() as f64;
    let lane_x = |lane: Lane| match lane {
        Lane::Sender => 140.0,
        Lane::Server => 360.0,
        Lane::Recipient => 580.0,
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<p>Message <code>{}</code> from <b>{}</b> to <b>{}</b>, the slowest to arrive ({} ms). Shown: the frames of the two devices that can belong to each phase of the message's path ({}) from its send to its last tick — frames carry no message id in the trace, so other traffic of these devices in the same phase may show too.{}</p>",
        esc(slow.id),
        esc(sender),
        esc(recipient),
        slow.latency_ms,
        PATH_KINDS.join(", "),
        if total > rows.len() { format!(" First {} of {} rows.", rows.len(), total) } else { String::new() }
    );
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\" role=\"img\" aria-label=\"sequence diagram\" font-size=\"11\">"
    );
    s += "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"6\" markerHeight=\"6\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#333\"/></marker></defs>\n";
    for (lane, name) in [(Lane::Sender, sender), (Lane::Server, "server"), (Lane::Recipient, recipient)] {
        let x = lane_x(lane);
        let _ =
            writeln!(s, "<text x=\"{x}\" y=\"20\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>", esc(name));
        let _ = writeln!(
            s,
            "<line x1=\"{x}\" y1=\"28\" x2=\"{x}\" y2=\"{:.0}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>",
            height - 10.0
        );
    }
    for (i, (at, label, arrow)) in rows.iter().enumerate() {
        let y = 48.0 + row_h * i as f64;
        let _ = writeln!(s, "<text x=\"4\" y=\"{:.1}\" fill=\"#777\">+{} ms</text>", y + 4.0, at - sent_at);
        match arrow {
            Arrow::Frame { from, to, dropped } => {
                let (x1, x2) = (lane_x(*from), lane_x(*to));
                let end = if *dropped { x1 + (x2 - x1) * 0.6 } else { x2 };
                let colour = if *dropped { "#b00020" } else { "#333" };
                let marker = if *dropped { "" } else { " marker-end=\"url(#arrow)\"" };
                let _ = writeln!(
                    s,
                    "<line x1=\"{x1}\" y1=\"{y:.1}\" x2=\"{end:.1}\" y2=\"{y:.1}\" stroke=\"{colour}\"{marker}/>"
                );
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{colour}\">{}</text>",
                    (x1 + x2) / 2.0,
                    y - 3.0,
                    esc(label)
                );
            }
            Arrow::Gap => {
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#777\">{}</text>",
                    lane_x(Lane::Server),
                    y + 4.0,
                    esc(label)
                );
            }
            Arrow::Note(lane) => {
                let x = lane_x(*lane);
                let _ = writeln!(s, "<circle cx=\"{x}\" cy=\"{y:.1}\" r=\"3\" fill=\"#176e2c\"/>");
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#176e2c\">{}</text>",
                    x + 6.0,
                    y + 4.0,
                    esc(label)
                );
            }
        }
    }
    s += "</svg>\n";
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Sender,
    Server,
    Recipient,
}

enum Arrow {
    Frame { from: Lane, to: Lane, dropped: bool },
    Note(Lane),
    Gap,
}

/// At most [`SEQUENCE_ROWS_MAX`] rows: every note (send, delivery, ticks,
/// connections) stays; frames are kept from the start and the end of the
/// path, with one row saying how many were left out in between.
fn thin(rows: Vec<(u64, String, Arrow)>) -> Vec<(u64, String, Arrow)> {
    if rows.len() <= SEQUENCE_ROWS_MAX {
        return rows;
    }
    let notes = rows.iter().filter(|r| matches!(r.2, Arrow::Note(_))).count();
    let frames = rows.len() - notes;
    let keep = SEQUENCE_ROWS_MAX.saturating_sub(notes + 1);
    let (head, tail) = (keep / 2, keep - keep / 2);
    let mut out = Vec::with_capacity(SEQUENCE_ROWS_MAX);
    let mut frame_no = 0;
    let mut gap_at = None;
    for r in rows {
        let keep_it = match r.2 {
            Arrow::Note(_) | Arrow::Gap => true,
            Arrow::Frame { .. } => {
                frame_no += 1;
                frame_no <= head || frame_no > frames - tail
            }
        };
        if keep_it {
            out.push(r);
        } else if gap_at.is_none() {
            gap_at = Some((out.len(), r.0));
        }
    }
    if let Some((i, at)) = gap_at {
        out.insert(i, (at, format!("… {} frames left out …", frames - head - tail), Arrow::Gap));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: u64, arrow: Arrow) -> (u64, String, Arrow) {
        (at, format!("r{at}"), arrow)
    }

    #[test]
    fn thinning_keeps_every_note_and_both_ends_of_the_path() {
        let mut rows = vec![row(0, Arrow::Note(Lane::Sender))];
        for at in 1..=200 {
            rows.push(row(at, Arrow::Frame { from: Lane::Sender, to: Lane::Server, dropped: false }));
        }
        rows.push(row(201, Arrow::Note(Lane::Recipient)));
        let out = thin(rows);
        assert_eq!(out.len(), SEQUENCE_ROWS_MAX);
        assert_eq!(out.iter().filter(|r| matches!(r.2, Arrow::Note(_))).count(), 2);
        assert_eq!(out.first().map(|r| r.0), Some(0));
        assert_eq!(out.last().map(|r| r.0), Some(201));
        assert_eq!(out.get(out.len() - 2).map(|r| r.0), Some(200), "the last frame stays");
        let gap = out.iter().find(|r| matches!(r.2, Arrow::Gap)).expect("a gap row");
        assert_eq!(gap.1, format!("… {} frames left out …", 200 - (SEQUENCE_ROWS_MAX - 3)));
    }

    #[test]
    fn short_paths_are_not_thinned() {
        let rows: Vec<_> = (0..10).map(|at| row(at, Arrow::Note(Lane::Server))).collect();
        assert_eq!(thin(rows).len(), 10);
    }

    #[test]
    fn text_from_the_trace_is_escaped() {
        assert_eq!(esc("<b>&\"x\"</b>"), "&lt;b&gt;&amp;&quot;x&quot;&lt;/b&gt;");
    }

    #[test]
    fn fields_are_split_at_the_first_equals_sign_and_the_last_of_a_key_wins() {
        let l = Line { at_ms: 0, event: Cow::Borrowed("x"), detail: Cow::Borrowed("a=1 flag a=2 c=x=y d=") };
        assert_eq!((l.get("a"), l.get("c"), l.get("d")), (Some("2"), Some("x=y"), Some("")));
        assert_eq!((l.get("flag"), l.get("x")), (None, None));
    }

    #[test]
    fn packed_keys_tell_apart_what_the_strings_do() {
        let words = ["", "a", "a\0", "m:5cce1f4d", "fifteen-bytes!!", "sixteen-bytes!!!", "sixteen-bytes!!?"];
        for a in words {
            for b in words {
                assert_eq!(key(a) == key(b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn latencies_count_each_recipient_once_from_the_first_send() {
        let trace = [
            (10, "send", "from=a to=b id=m:1 len=3"),
            (15, "send", "from=a to=b id=m:1 len=3"),
            (40, "app", "user=b event=message from=a id=m:1 len=3"),
            (90, "app", "user=b event=message from=a id=m:1 len=3"),
            (95, "app", "user=c event=message from=a id=m:9 len=3"),
        ];
        let lines: Vec<Line<'_>> = trace
            .iter()
            .map(|(at, e, d)| Line { at_ms: *at, event: Cow::Borrowed(e), detail: Cow::Borrowed(d) })
            .collect();
        let s = sends(&lines);
        let d = latencies(&lines, &s);
        assert_eq!(d.len(), 1, "a redelivery and an unknown id add nothing");
        assert_eq!((d[0].id, d[0].user, d[0].latency_ms), ("m:1", "b", 30));
        let cdf = latency_cdf(&d);
        assert!(cdf.contains("p50 30 ms") && cdf.contains("p99 30 ms"), "{cdf}");
    }
}
