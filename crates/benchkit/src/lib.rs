//! What every benchmark harness shares, so that all of them write their results the same way:
//!
//! - [`results_dir`]: `<target>/bench-results/`, where every run writes its files;
//! - [`write_json`]: the machine-readable result file;
//! - [`Percentiles`]: latency percentiles of a set of samples;
//! - [`Timeline`]: throughput and latency per time bucket, for "over time" plots;
//! - [`Machine`]: the machine a run came from (CPUs, memory, kernel, OS);
//! - [`write_svg`]: line charts, stacked in one SVG file (plotters, no font libraries).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// `<target>/bench-results/`, created if missing.
///
/// The target directory is `CARGO_TARGET_DIR` when set, otherwise the nearest ancestor of
/// the running executable that holds cargo's `CACHEDIR.TAG` (so it works from `cargo run`,
/// `cargo bench` and `cargo xtask` alike), otherwise `./target`.
pub fn results_dir() -> Result<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => std::env::current_exe()
            .ok()
            .and_then(|exe| {
                exe.ancestors()
                    .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                    .map(Path::to_path_buf)
            })
            .unwrap_or_else(|| PathBuf::from("target")),
    };
    let dir = target.join("bench-results");
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    Ok(dir)
}

/// Write `value` as pretty JSON (with a final newline) to `path`.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("could not write {}", path.display()))
}

/// Seconds since the Unix epoch, for `generated_unix` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Percentiles of a set of samples (any unit; the harnesses use milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// `None` for no samples. NaNs are ignored. Nearest-rank percentiles.
    pub fn of(samples: &[f64]) -> Option<Percentiles> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        Some(Percentiles {
            count: v.len() as u64,
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: v[v.len() - 1],
        })
    }
}

/// Events counted in fixed-width time buckets from a start instant, each with the latencies
/// of the events that ended in it: the source of "throughput and latency over time".
#[derive(Debug, Clone)]
pub struct Timeline {
    start: Instant,
    width: Duration,
    buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    count: u64,
    latencies: Vec<f64>,
}

/// One bucket of a [`Timeline`]: `t` is the bucket's end in seconds from the start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub t: f64,
    pub count: u64,
    pub per_sec: f64,
    pub latency: Option<Percentiles>,
}

impl Timeline {
    pub fn new(start: Instant, width: Duration) -> Timeline {
        assert!(!width.is_zero(), "a timeline needs a bucket width");
        Timeline { start, width, buckets: Vec::new() }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    fn bucket(&mut self, at: Instant) -> &mut Bucket {
        let i = (at.saturating_duration_since(self.start).as_nanos() / self.width.as_nanos()) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize_with(i + 1, Bucket::default);
        }
        &mut self.buckets[i]
    }

    /// `n` events ended at `at`.
    pub fn count(&mut self, at: Instant, n: u64) {
        self.bucket(at).count += n;
    }

    /// One event ended at `at`, `latency` after it began.
    pub fn record(&mut self, at: Instant, latency: f64) {
        let b = self.bucket(at);
        b.count += 1;
        b.latencies.push(latency);
    }

    /// Add another timeline with the same start and width (one per worker task, merged at
    /// the end).
    pub fn merge(&mut self, other: &Timeline) {
        assert_eq!(self.width, other.width, "timelines of different widths");
        let shift = other.start.saturating_duration_since(self.start).as_nanos() / self.width.as_nanos();
        for (i, b) in other.buckets.iter().enumerate() {
            let at = i + shift as usize;
            if self.buckets.len() <= at {
                self.buckets.resize_with(at + 1, Bucket::default);
            }
            self.buckets[at].count += b.count;
            self.buckets[at].latencies.extend_from_slice(&b.latencies);
        }
    }

    /// Every bucket up to the last one that saw an event (empty buckets included, as zeros).
    pub fn points(&self) -> Vec<TimelinePoint> {
        let w = self.width.as_secs_f64();
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, b)| TimelinePoint {
                t: (i + 1) as f64 * w,
                count: b.count,
                per_sec: b.count as f64 / w,
                latency: Percentiles::of(&b.latencies),
            })
            .collect()
    }

    /// All latencies recorded, over the whole run.
    pub fn latency(&self) -> Option<Percentiles> {
        let all: Vec<f64> = self.buckets.iter().flat_map(|b| b.latencies.iter().copied()).collect();
        Percentiles::of(&all)
    }

    /// Total events counted.
    pub fn total(&self) -> u64 {
        self.buckets.iter().map(|b| b.count).sum()
    }
}

/// The machine a run came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub memory_gib: Option<f64>,
    pub os: Option<String>,
    pub kernel: Option<String>,
}

impl Machine {
    /// Read from `/proc` and `/etc/os-release`; what cannot be read is `None`.
    pub fn detect() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let cpu_model = read("/proc/cpuinfo").and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
        let memory_gib = read("/proc/meminfo").and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
        });
        let os = read("/etc/os-release").and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        });
        let kernel = read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string());
        Machine {
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_model,
            memory_gib,
            os,
            kernel,
        }
    }

    /// One line for a report: "2 CPUs (AMD EPYC …), 23.4 GiB, Debian GNU/Linux 12, Linux 6.1".
    pub fn describe(&self) -> String {
        let mut s = format!("{} CPUs", self.cpus);
        if let Some(m) = &self.cpu_model {
            s += &format!(" ({m})");
        }
        if let Some(g) = self.memory_gib {
            s += &format!(", {g} GiB");
        }
        if let Some(os) = &self.os {
            s += &format!(", {os}");
        }
        if let Some(k) = &self.kernel {
            s += &format!(", Linux {k}");
        }
        s
    }
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: impl IntoIterator<Item = (f64, f64)>) -> Series {
        Series { name: name.into(), points: points.into_iter().collect() }
    }
}

/// One chart: a title, axis labels and its lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

impl Chart {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Chart {
        Chart { title: title.into(), x_label: x_label.into(), y_label: y_label.into(), series: Vec::new() }
    }

    pub fn line(mut self, series: Series) -> Chart {
        self.series.push(series);
        self
    }
}

/// Distinct, readable line colours (matplotlib's "tab10").
const TAB10: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// Write `charts` stacked top to bottom into one SVG file. A series with a single point is
/// drawn as a dot; NaN and infinite points are left out; an empty chart says so.
pub fn write_svg(path: &Path, charts: &[Chart]) -> Result<()> {
    use plotters::prelude::*;

    let rows = charts.len().max(1) as u32;
    let root = SVGBackend::new(path, (960, 320 * rows)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let areas = root.split_evenly((charts.len().max(1), 1));
        for (area, chart) in areas.iter().zip(charts) {
            let finite: Vec<Vec<(f64, f64)>> = chart
                .series
                .iter()
                .map(|s| s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect())
                .collect();
            let all = finite.iter().flatten();
            let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
            for &(x, y) in all {
                x0 = x0.min(x);
                x1 = x1.max(x);
                y1 = y1.max(y);
            }
            if !x0.is_finite() {
                (x0, x1) = (0.0, 1.0);
            }
            if x1 <= x0 {
                x1 = x0 + 1.0;
            }
            let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
            let mut c = ChartBuilder::on(area)
                .caption(&chart.title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(x0..x1, 0.0..y1)?;
            c.configure_mesh()
                .x_desc(chart.x_label.as_str())
                .y_desc(chart.y_label.as_str())
                .draw()?;
            for (i, (s, pts)) in chart.series.iter().zip(&finite).enumerate() {
                let (r, g, b) = TAB10[i % TAB10.len()];
                let color = RGBColor(r, g, b).to_rgba();
                let style = ShapeStyle { color, filled: true, stroke_width: 2 };
                if pts.len() == 1 {
                    c.draw_series(pts.iter().map(|&p| Circle::new(p, 4, style)))?
                } else {
                    c.draw_series(LineSeries::new(pts.iter().copied(), style))?
                }
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
            if !chart.series.is_empty() {
                c.configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()?;
            }
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("could not draw {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v).unwrap();
        assert_eq!((p.count, p.p50, p.p95, p.p99, p.max), (100, 50.0, 95.0, 99.0, 100.0));
        assert_eq!(p.mean, 50.5);
        assert_eq!(Percentiles::of(&[]), None);
        assert_eq!(Percentiles::of(&[f64::NAN, 3.0]).unwrap().p99, 3.0);
    }

    #[test]
    fn timeline_buckets_counts_and_latencies() {
        let t0 = Instant::now();
        let mut a = Timeline::new(t0, Duration::from_secs(1));
        a.record(t0 + Duration::from_millis(100), 5.0);
        a.count(t0 + Duration::from_millis(2500), 10);
        let mut b = Timeline::new(t0, Duration::from_secs(1));
        b.record(t0 + Duration::from_millis(900), 7.0);
        a.merge(&b);
        let pts = a.points();
        assert_eq!(pts.len(), 3);
        assert_eq!((pts[0].count, pts[1].count, pts[2].count), (2, 0, 10));
        assert_eq!(pts[0].latency.unwrap().max, 7.0);
        assert_eq!(pts[2].per_sec, 10.0);
        assert_eq!(a.total(), 12);
        assert_eq!(a.latency().unwrap().count, 2);
    }

    #[test]
    fn svg_has_every_chart_and_series() {
        let dir = std::env::temp_dir().join(format!("benchkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plot.svg");
        let charts = [
            Chart::new("throughput", "s", "msgs/s")
                .line(Series::new("ours", [(1.0, 10.0), (2.0, 12.0)]))
                .line(Series::new("peer", [(1.0, 5.0)])),
            Chart::new("empty", "s", "ms"),
        ];
        write_svg(&path, &charts).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for text in ["throughput", "empty", "ours", "peer", "msgs/s"] {
            assert!(svg.contains(text), "{text} missing");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn machine_describes_itself() {
        let m = Machine::detect();
        assert!(m.cpus >= 1);
        assert!(m.describe().starts_with(&format!("{} CPUs", m.cpus)));
    }
}
