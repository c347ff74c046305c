//! The result table and the goals, printed as text and written as markdown.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// One line of the table.
pub struct Row {
    pub scenario: String,
    /// How the load was offered: `find-max` or a fixed rate.
    pub load: String,
    /// Messages per second completed (acknowledged, answered or delivered,
    /// as the scenario says).
    pub throughput: f64,
    /// p50, p90, p99, max in milliseconds.
    pub latency: Option<[f64; 4]>,
    /// Percent of one core used by the server process.
    pub cpu: Option<f64>,
    /// Peak resident memory of the server process, bytes.
    pub rss: Option<u64>,
    /// Bytes the server process wrote to disk per message.
    pub disk: Option<f64>,
    /// The comparison with this row's baseline from the same run.
    pub versus: String,
    /// Failures, missing deliveries, duplicates.
    pub notes: String,
}

impl Row {
    pub fn new(scenario: &str, load: String) -> Row {
        Row {
            scenario: scenario.to_string(),
            load,
            throughput: 0.0,
            latency: None,
            cpu: None,
            rss: None,
            disk: None,
            versus: String::new(),
            notes: String::new(),
        }
    }

    pub fn with_latency(mut self, hist: &Histogram<u64>) -> Row {
        self.latency = (!hist.is_empty()).then(|| percentiles(hist));
        self
    }

    pub fn p(&self, index: usize) -> Option<f64> {
        self.latency.map(|l| l[index])
    }
}

/// p50, p90, p99 and max of a microsecond histogram, in milliseconds.
pub fn percentiles(hist: &Histogram<u64>) -> [f64; 4] {
    let ms = |micros: u64| micros as f64 / 1000.0;
    [
        ms(hist.value_at_quantile(0.50)),
        ms(hist.value_at_quantile(0.90)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.max()),
    ]
}

/// One of the goals, measured.
pub struct Goal {
    pub goal: String,
    pub measured: String,
    /// `None`: not measured in this run, or a smoke run.
    pub met: Option<bool>,
}

/// Everything a run produced.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub goals: Vec<Goal>,
}

const HEADER: [&str; 12] = [
    "scenario",
    "load",
    "msg/s",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "max ms",
    "CPU %",
    "peak RSS",
    "disk KB/msg",
    "vs baseline (same run)",
    "notes",
];

impl Report {
    fn cells(row: &Row) -> Vec<String> {
        let lat = |i: usize| row.p(i).map_or("—".into(), |v| format!("{v:.2}"));
        vec![
            row.scenario.clone(),
            row.load.clone(),
            if row.throughput > 0.0 {
                format!("{:.0}", row.throughput)
            } else {
                "—".into()
            },
            lat(0),
            lat(1),
            lat(2),
            lat(3),
            row.cpu.map_or("—".into(), |c| format!("{c:.0}")),
            row.rss
                .map_or("—".into(), |b| format!("{:.0} MiB", b as f64 / 1048576.0)),
            row.disk
                .map_or("—".into(), |b| format!("{:.1}", b / 1024.0)),
            row.versus.clone(),
            row.notes.clone(),
        ]
    }

    fn goal_cells(goal: &Goal) -> [String; 3] {
        let verdict = match goal.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not judged",
        };
        [
            goal.goal.clone(),
            goal.measured.clone(),
            verdict.to_string(),
        ]
    }

    /// The table and goals as markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        };
        line(&mut out, &HEADER.map(String::from));
        line(&mut out, &HEADER.map(|_| "---".to_string()));
        for row in &self.rows {
            line(&mut out, &Self::cells(row));
        }
        out.push_str("\n| goal | measured | verdict |\n| --- | --- | --- |\n");
        for goal in &self.goals {
            line(&mut out, &Self::goal_cells(goal));
        }
        out
    }

    /// The same, aligned for a terminal.
    pub fn text(&self) -> String {
        let mut rows: Vec<Vec<String>> = vec![HEADER.map(String::from).to_vec()];
        rows.extend(self.rows.iter().map(Self::cells));
        let mut out = aligned(&rows);
        out.push('\n');
        let mut goals = vec![vec!["goal".into(), "measured".into(), "verdict".into()]];
        goals.extend(self.goals.iter().map(|g| Self::goal_cells(g).to_vec()));
        out.push_str(&aligned(&goals));
        out
    }
}

fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}
