//! The failure matrix: one row per model, one column per backend and file, every finding listed
//! below it.

use std::fmt::Write;

/// The outcome of one model in one column.
pub enum Cell {
    /// Every comparison held.
    Pass,
    /// These comparisons failed (or the load did).
    Fail(Vec<String>),
    /// torch could not export this file.
    Skipped(String),
    /// Not applicable (backend not compiled in, other batch mode, architecture not in candle).
    Absent,
}

/// The matrix of a run.
pub struct Matrix {
    columns: Vec<&'static str>,
    rows: Vec<(String, Vec<Cell>)>,
}

impl Cell {
    /// The cell as the table shows it: `ok`, `FAIL n` (n findings), `skip (torch)` or `-`.
    pub fn summary(&self) -> String {
        match self {
            Cell::Pass => "ok".to_string(),
            Cell::Fail(f) => format!("FAIL {}", f.len()),
            Cell::Skipped(_) => "skip (torch)".to_string(),
            Cell::Absent => "-".to_string(),
        }
    }
}

impl Matrix {
    pub fn new(columns: Vec<&'static str>) -> Self {
        Matrix { columns, rows: Vec::new() }
    }

    pub fn push(&mut self, model: String, cells: Vec<Cell>) {
        assert_eq!(cells.len(), self.columns.len());
        self.rows.push((model, cells));
    }

    /// Combinations compared, and those that failed.
    pub fn counts(&self) -> (usize, usize) {
        let cells = self.rows.iter().flat_map(|(_, c)| c);
        let compared = cells.clone().filter(|c| matches!(c, Cell::Pass | Cell::Fail(_))).count();
        let failed = cells.filter(|c| matches!(c, Cell::Fail(_))).count();
        (compared, failed)
    }

    /// The table (`ok`, `FAIL n` with n findings, `skip` for an export torch could not make, `-`),
    /// then every finding and skip, one per line.
    pub fn render(&self) -> String {
        let width = self.rows.iter().map(|(m, _)| m.len()).max().unwrap_or(0).max(5);
        let mut out = format!("{:width$}", "model");
        for c in &self.columns {
            let _ = write!(out, " | {c:16}");
        }
        out.push('\n');
        for (model, cells) in &self.rows {
            let _ = write!(out, "{model:width$}");
            for cell in cells {
                let _ = write!(out, " | {:16}", cell.summary());
            }
            out.push('\n');
        }
        for (model, cells) in &self.rows {
            for (column, cell) in self.columns.iter().zip(cells) {
                match cell {
                    Cell::Fail(findings) => {
                        for f in findings {
                            let _ = writeln!(out, "{model} / {column}: {f}");
                        }
                    }
                    Cell::Skipped(e) => {
                        let _ = writeln!(out, "{model} / {column}: not exported by torch: {e}");
                    }
                    _ => {}
                }
            }
        }
        out
    }
}
