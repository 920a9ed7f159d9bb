//! The report: markdown printed as it is produced and kept for `RESULTS.md`; number formatting.

use std::io::Write as _;

/// Markdown text, echoed to stdout as it grows.
#[derive(Debug, Default)]
pub struct Report {
    md: String,
}

impl Report {
    /// Appends a paragraph (or any block) followed by a blank line.
    pub fn block(&mut self, text: &str) {
        let text = text.trim_end();
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{text}\n");
        let _ = out.flush();
        self.md.push_str(text);
        self.md.push_str("\n\n");
    }

    /// Appends a section heading.
    pub fn heading(&mut self, text: &str) {
        self.block(&format!("## {text}"));
    }

    /// Appends a table.
    pub fn table(&mut self, headers: &[&str], rows: &[Vec<String>]) {
        let mut t = format!("| {} |\n", headers.join(" | "));
        t.push_str(&format!("|{}\n", "---|".repeat(headers.len())));
        for r in rows {
            t.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        self.block(&t);
    }

    /// Appends a fenced code block.
    pub fn code(&mut self, text: &str) {
        self.block(&format!("```\n{}\n```", text.trim_end()));
    }

    /// The markdown so far.
    pub fn markdown(&self) -> &str {
        &self.md
    }
}

/// Prints a progress line (stderr; not part of the report).
pub fn progress(msg: &str) {
    eprintln!("[nubo-bench] {msg}");
}

/// Requests per second: `139.9k`.
pub fn rps(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

/// A latency in µs: `850 µs`, `1.68 ms`, `1.20 s`.
pub fn micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// A duration for start-up figures: `4.5 ms`.
pub fn millis(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// KiB as MiB/GiB/TiB.
pub fn kib(v: u64) -> String {
    let v = v as f64;
    if v < 1024.0 * 1024.0 {
        format!("{:.1} MiB", v / 1024.0)
    } else if v < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", v / (1024.0 * 1024.0))
    } else {
        format!("{:.2} TiB", v / (1024.0 * 1024.0 * 1024.0))
    }
}

/// Median of a non-empty list (mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rps(139_900.0), "139.9k");
        assert_eq!(micros(110.0), "110 µs");
        assert_eq!(micros(1680.0), "1.68 ms");
        assert_eq!(kib(3 * 1024 + 300), "3.3 MiB");
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
