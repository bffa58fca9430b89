//! Experiment write-ups: report.md (tables, plots, commands, configs, machine, date) and a CSV.

use super::options::ExpOptions;
use anyhow::Result;
use std::fmt::Write as _;

pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

pub struct Report {
    pub title: String,
    /// Paragraphs before the tables: what was run and what the paper claims.
    pub intro: Vec<String>,
    pub tables: Vec<Table>,
    /// (file name in the experiment folder, caption).
    pub plots: Vec<(String, String)>,
    /// Paragraphs after the tables: our reading of the numbers against the paper.
    pub findings: Vec<String>,
    /// The resolved config of one run, for reference.
    pub config: String,
}

/// CPU model, core count and today's date of this machine.
pub fn machine() -> (String, String) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    (format!("{cpu}, {cores} cores, candle CPU backend"), date)
}

fn table_md(t: &Table) -> String {
    let mut s = format!(
        "**{}**\n\n| {} |\n|{}\n",
        t.caption,
        t.header.join(" | "),
        "---|".repeat(t.header.len())
    );
    for r in &t.rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

fn csv_escape(x: &str) -> String {
    if x.contains([',', '"', '\n']) {
        format!("\"{}\"", x.replace('"', "\"\""))
    } else {
        x.to_string()
    }
}

/// Write report.md and results.csv (the CSV holds one row per run).
pub fn write(
    opts: &ExpOptions,
    report: &Report,
    csv_header: &[&str],
    csv_rows: &[Vec<String>],
) -> Result<()> {
    let (machine, date) = machine();
    let mut md = format!("# {}\n\n", report.title);
    let _ = writeln!(md, "Machine: {machine}. Date: {date}.\n");
    let _ = writeln!(md, "Command: `{}`\n", opts.command);
    let scale = if opts.smoke {
        "smoke (10 steps, one seed)".to_string()
    } else {
        format!("scale {}", opts.scale)
    };
    let seeds: Vec<String> = opts.seeds().iter().map(|s| s.to_string()).collect();
    let _ = writeln!(
        md,
        "Preset `{}`, {scale}, seeds {}; numbers are mean ± sd over seeds.\n",
        opts.preset,
        seeds.join(", ")
    );
    for p in &report.intro {
        let _ = writeln!(md, "{p}\n");
    }
    for t in &report.tables {
        let _ = writeln!(md, "{}", table_md(t));
    }
    for (file, caption) in &report.plots {
        let _ = writeln!(md, "![{caption}]({file})\n\n*{caption}*\n");
    }
    for p in &report.findings {
        let _ = writeln!(md, "{p}\n");
    }
    let _ = writeln!(
        md,
        "Per-run numbers: [results.csv](results.csv); runs and checkpoints: `runs/`.\n"
    );
    let _ = writeln!(
        md,
        "<details><summary>Resolved config of one run</summary>\n\n```toml\n{}```\n</details>",
        report.config
    );
    crate::runtime::fsutil::write_atomic(&opts.out.join("report.md"), md.as_bytes())?;
    let mut csv = csv_header.join(",") + "\n";
    for r in csv_rows {
        csv += &(r
            .iter()
            .map(|x| csv_escape(x))
            .collect::<Vec<_>>()
            .join(",")
            + "\n");
    }
    crate::runtime::fsutil::write_atomic(&opts.out.join("results.csv"), csv.as_bytes())?;
    Ok(())
}
