//! Where things are in a scenario file: a map between field paths
//! (`faults.frames[0].drop_per_mille`) and byte spans, built from toml's
//! spanned document tree. The serde errors carry a span and need a path; the
//! validator's errors carry a path and need a span. One index answers both,
//! so every error prints `file:line:column: field.path: message`.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One key or value of the document.
#[derive(Debug, Clone)]
struct Node {
    path: String,
    span: Range<usize>,
}

/// Path ↔ span index of one scenario document.
#[derive(Debug, Clone, Default)]
pub struct Locator {
    /// Every key and value, in document-tree order.
    nodes: Vec<Node>,
    /// Byte offsets of the start of each line.
    line_starts: Vec<usize>,
    /// The document, for column counting in characters.
    text: String,
}

/// Deepest nesting the index walks. Scenario files nest four levels at most;
/// the bound keeps a hostile file with thousands of nested arrays from
/// exhausting the stack.
const DEPTH_MAX: usize = 32;

impl Locator {
    /// Indexes `text`. A document that does not parse gives an index with no
    /// paths (errors then fall back to positions alone).
    pub fn new(text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        let mut loc = Locator { nodes: Vec::new(), line_starts, text: text.to_owned() };
        if let Ok(doc) = DeTable::parse(text) {
            loc.walk_table(doc.get_ref(), "", 0);
        }
        loc
    }

    fn walk_table(&mut self, table: &DeTable<'_>, prefix: &str, depth: usize) {
        if depth > DEPTH_MAX {
            return;
        }
        for (k, v) in table.iter() {
            let path = if prefix.is_empty() { k.get_ref().to_string() } else { format!("{prefix}.{}", k.get_ref()) };
            self.nodes.push(Node { path: path.clone(), span: k.span() });
            self.walk_value(v.get_ref(), v.span(), &path, depth + 1);
        }
    }

    fn walk_value(&mut self, value: &DeValue<'_>, span: Range<usize>, path: &str, depth: usize) {
        if depth > DEPTH_MAX {
            return;
        }
        self.nodes.push(Node { path: path.to_owned(), span });
        match value {
            DeValue::Table(t) => self.walk_table(t, path, depth + 1),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    self.walk_value(item.get_ref(), item.span(), &format!("{path}[{i}]"), depth + 1);
                }
            }
            _ => {}
        }
    }

    /// Whether the document parsed (an index without paths means it did not).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The path of the smallest key or value covering `span` (an exact
    /// match wins), or `None` when nothing covers it.
    pub fn path_at(&self, span: &Range<usize>) -> Option<&str> {
        self.nodes
            .iter()
            .filter(|n| n.span.start <= span.start && span.end <= n.span.end.max(n.span.start + 1))
            .min_by_key(|n| (n.span != *span, n.span.end - n.span.start))
            .map(|n| n.path.as_str())
    }

    /// The span of `path`'s value, or of its nearest ancestor that exists
    /// (a missing key is reported at the table that lacks it).
    pub fn span_of(&self, path: &str) -> Option<Range<usize>> {
        let mut p = path;
        loop {
            // The last node with this path is its value (the key comes first).
            if let Some(n) = self.nodes.iter().rev().find(|n| n.path == p) {
                return Some(n.span.clone());
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The span of the key `path` itself (its first node: the key comes
    /// before its value), if the key is written in the file.
    pub fn key_span(&self, path: &str) -> Option<Range<usize>> {
        self.nodes.iter().find(|n| n.path == path).map(|n| n.span.clone())
    }

    /// 1-based line and column (in characters) of byte `offset`.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|s| *s <= offset).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let end = offset.min(self.text.len());
        let col = self.text.get(start..end).map_or(end.saturating_sub(start), |s| s.chars().count()) + 1;
        (line, col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[scenario]\nname = \"x\"\n\n[[faults.frames]]\nat = \"1s\"\n[[faults.frames]]\nat = \"2s\"\nusers = [\"a\", \"b\"]\n";

    #[test]
    fn spans_map_to_the_deepest_path() {
        let loc = Locator::new(DOC);
        let b = DOC.find("\"b\"").unwrap();
        assert_eq!(loc.path_at(&(b..b + 3)), Some("faults.frames[1].users[1]"));
        let key = DOC.find("name").unwrap();
        assert_eq!(loc.path_at(&(key..key + 4)), Some("scenario.name"));
    }

    #[test]
    fn paths_map_to_spans_or_their_nearest_ancestor() {
        let loc = Locator::new(DOC);
        let span = loc.span_of("faults.frames[1].at").unwrap();
        assert_eq!(&DOC[span], "\"2s\"");
        let missing = loc.span_of("faults.frames[1].kind").unwrap();
        assert_eq!(loc.line_col(missing.start).0, 6, "reported at the table header");
    }

    #[test]
    fn line_and_column_count_characters() {
        let loc = Locator::new("a = 1\nb = \"é\"x\n");
        assert_eq!(loc.line_col(0), (1, 1));
        assert_eq!(loc.line_col(6), (2, 1));
        assert_eq!(loc.line_col(13), (2, 7));
    }
}
