//! bluetick-sim: scenario files, drivers, oracle verdicts and reports.

pub mod driver;
