//! Collects per-run figures and prints the side-by-side table of medians.

use crate::stats::median;

/// Which column a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Ours,
    Theirs,
}

#[derive(Debug)]
struct Row {
    section: String,
    scenario: String,
    unit: &'static str,
    higher_is_better: bool,
    target: Option<Target>,
    ours: Vec<f64>,
    theirs: Vec<f64>,
}

/// A goal a row is checked against.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// ours/theirs must be at least this.
    RatioAtLeast(f64),
    /// ours must be at most this (absolute, in the row's unit).
    AtMost(f64),
    /// ours must be at least this (absolute, in the row's unit).
    AtLeast(f64),
}

#[derive(Debug, Default)]
pub struct Results {
    rows: Vec<Row>,
}

impl Results {
    /// Declares a row (idempotent) so the table keeps a stable order across runs.
    pub fn row(
        &mut self,
        section: &str,
        scenario: &str,
        unit: &'static str,
        higher_is_better: bool,
        target: Option<Target>,
    ) {
        if self.find(section, scenario).is_none() {
            self.rows.push(Row {
                section: section.into(),
                scenario: scenario.into(),
                unit,
                higher_is_better,
                target,
                ours: vec![],
                theirs: vec![],
            });
        }
    }

    fn find(&mut self, section: &str, scenario: &str) -> Option<&mut Row> {
        self.rows
            .iter_mut()
            .find(|r| r.section == section && r.scenario == scenario)
    }

    pub fn add(&mut self, section: &str, scenario: &str, side: Side, value: f64) {
        let row = self
            .find(section, scenario)
            .unwrap_or_else(|| panic!("row {section}/{scenario} was not declared"));
        match side {
            Side::Ours => row.ours.push(value),
            Side::Theirs => row.theirs.push(value),
        }
    }

    pub fn print(&self, runs: usize) {
        println!();
        println!(
            "== results (median of {runs} run(s); ratio = median over runs of ours / graphile_worker in the same run) =="
        );
        let headers = [
            "scenario",
            "unit",
            "durable-jobs",
            "graphile_worker",
            "ours/theirs",
            "target",
        ];
        let mut lines: Vec<[String; 6]> = vec![];
        let mut section = "";
        let mut sections: Vec<(usize, String)> = vec![];
        for r in &self.rows {
            if r.section != section {
                section = &r.section;
                sections.push((lines.len(), r.section.clone()));
            }
            let o = median(&r.ours);
            let t = median(&r.theirs);
            // With one figure per side per run, the ratio is the median of the per-run
            // ratios: both sides of a run saw the same machine load, so pairing cancels
            // most of the noise a shared 2-core machine adds.
            let ratio = if r.ours.is_empty() || r.theirs.is_empty() {
                "-".to_string()
            } else if r.ours.len() == r.theirs.len() {
                let per_run: Vec<f64> = r.ours.iter().zip(&r.theirs).map(|(a, b)| a / b).collect();
                format!("{:.2}x", median(&per_run))
            } else {
                format!("{:.2}x", o / t)
            };
            let ratio_value = ratio
                .trim_end_matches('x')
                .parse::<f64>()
                .unwrap_or(f64::NAN);
            let target = match r.target {
                None => "-".to_string(),
                Some(Target::RatioAtLeast(x)) => {
                    let ok = ratio_value >= x;
                    verdict(
                        format!(">= {x}x"),
                        ok,
                        r.ours.is_empty() || r.theirs.is_empty(),
                    )
                }
                Some(Target::AtMost(x)) => {
                    verdict(format!("<= {x} {}", r.unit), o <= x, r.ours.is_empty())
                }
                Some(Target::AtLeast(x)) => {
                    verdict(format!(">= {x} {}", r.unit), o >= x, r.ours.is_empty())
                }
            };
            let unit = format!(
                "{} ({})",
                r.unit,
                if r.higher_is_better {
                    "higher better"
                } else {
                    "lower better"
                }
            );
            lines.push([
                r.scenario.clone(),
                unit,
                cell(&r.ours, r.unit),
                cell(&r.theirs, r.unit),
                ratio,
                target,
            ]);
        }
        let mut w = headers.map(str::len);
        for l in &lines {
            for (i, c) in l.iter().enumerate() {
                w[i] = w[i].max(c.len());
            }
        }
        let fmt = |cols: [&str; 6]| {
            format!(
                "| {:<w0$} | {:<w1$} | {:>w2$} | {:>w3$} | {:>w4$} | {:<w5$} |",
                cols[0],
                cols[1],
                cols[2],
                cols[3],
                cols[4],
                cols[5],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3],
                w4 = w[4],
                w5 = w[5]
            )
        };
        let rule = format!(
            "|{}|",
            w.iter()
                .map(|n| "-".repeat(n + 2))
                .collect::<Vec<_>>()
                .join("|")
        );
        println!("{}", fmt(headers));
        println!("{rule}");
        let mut next_section = sections.iter().peekable();
        for (i, l) in lines.iter().enumerate() {
            if let Some((_, name)) = next_section.next_if(|(at, _)| *at == i) {
                println!("{}", fmt([&format!("[{name}]"), "", "", "", "", ""]));
            }
            println!("{}", fmt([&l[0], &l[1], &l[2], &l[3], &l[4], &l[5]]));
        }
        if runs > 1 {
            println!();
            println!("per-run figures:");
            for r in &self.rows {
                println!(
                    "  {} / {}: ours {:?}  theirs {:?}",
                    r.section,
                    r.scenario,
                    r.ours.iter().map(|v| round(*v)).collect::<Vec<_>>(),
                    r.theirs.iter().map(|v| round(*v)).collect::<Vec<_>>()
                );
            }
        }
    }
}

fn round(v: f64) -> f64 {
    if v.abs() >= 100.0 {
        v.round()
    } else {
        (v * 100.0).round() / 100.0
    }
}

fn verdict(goal: String, ok: bool, missing: bool) -> String {
    if missing {
        goal
    } else if ok {
        format!("{goal} ok")
    } else {
        format!("{goal} MISSED")
    }
}

fn cell(v: &[f64], unit: &str) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let m = median(v);
    // Times and ratios need their decimals: a ratio of 0.83 read "1".
    if unit == "ms" || unit == "x" {
        format!("{m:.2}")
    } else {
        format!("{:.0}", m)
    }
}
