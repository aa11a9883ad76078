//! The Prometheus text exposition format (version 0.0.4): an encoder for
//! what this crate exposes, and a parser for what a worker exposes, so that
//! the daemon can re-export it with a `node` label added.
//!
//! The format is small (one `# HELP` and one `# TYPE` line per family, then
//! `name{label="value",...} value` lines) and the parser only has to read
//! what [`Exposition`] writes, so both are written here rather than pulled
//! from a crate: `prometheus-client` encodes OpenMetrics but parses nothing,
//! and re-exporting needs both directions.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "counter" => Some(Kind::Counter),
            "gauge" => Some(Kind::Gauge),
            "histogram" => Some(Kind::Histogram),
            _ => None,
        }
    }

    /// Whether `sample` is a sample name of the family `family` of this kind.
    fn owns(self, family: &str, sample: &str) -> bool {
        match self {
            Kind::Histogram => {
                sample.strip_prefix(family).is_some_and(|rest| matches!(rest, "_bucket" | "_sum" | "_count"))
            }
            _ => sample == family,
        }
    }
}

/// Upper bounds, in seconds, of the job duration histograms' buckets: a
/// probe takes well under a second, a render can take an hour.
pub const DURATION_BUCKETS: [f64; 14] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

/// A histogram over [`DURATION_BUCKETS`] (counts per bucket, not cumulative).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    buckets: [u64; DURATION_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, value: f64) {
        let value = if value.is_finite() { value.max(0.0) } else { 0.0 };
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| value <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// One exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Every sample of the
    /// family must follow before the next family starts.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels.iter().map(|(k, v)| (*k, *v)));
        self.text.push(' ');
        write_value(&mut self.text, value);
        self.text.push('\n');
    }

    /// The `_bucket`, `_sum` and `_count` samples of one histogram.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0;
        for (bound, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
            cumulative += n;
            let le = bound.to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, cumulative as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &l, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    /// Appends the families of other processes (see [`Reexport`]).
    pub fn reexport(&mut self, families: &Reexport) {
        for (name, f) in &families.families {
            self.family(name, f.kind, &f.help);
            for s in &f.samples {
                self.text.push_str(&s.name);
                write_labels(&mut self.text, s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                self.text.push(' ');
                write_value(&mut self.text, s.value);
                self.text.push('\n');
            }
        }
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn write_labels<'a>(out: &mut String, labels: impl Iterator<Item = (&'a str, &'a str)>) {
    let mut first = true;
    for (k, v) in labels {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// One parsed family.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub kind: Kind,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// Parses an exposition: the families in it, by name. Samples outside a
/// declared family, unknown types and malformed lines are skipped, so that
/// one bad line costs that line only.
pub fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            helps.insert(name.to_string(), help.replace("\\n", "\n").replace("\\\\", "\\"));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next().and_then(Kind::parse)) else {
                current = None;
                continue;
            };
            if !is_metric_name(name) || families.contains_key(name) {
                current = None;
                continue;
            }
            families.insert(name.to_string(), Family { kind, help: String::new(), samples: Vec::new() });
            current = Some(name.to_string());
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else if let (Some(fam), Some(sample)) = (&current, parse_sample(line)) {
            if let Some(f) = families.get_mut(fam) {
                if f.kind.owns(fam, &sample.name) {
                    f.samples.push(sample);
                }
            }
        }
    }
    for (name, f) in families.iter_mut() {
        f.help = helps.remove(name).unwrap_or_default();
    }
    families
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name{labels} value [timestamp]`; the timestamp is dropped.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_string(), labels, value })
}

/// The labels after `{`, and what follows the closing `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels: Vec<(String, String)> = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(tail) = s.strip_prefix('}') {
            return Some((labels, tail));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        if !is_label_name(key) || labels.iter().any(|(k, _)| k == key) {
            return None;
        }
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()? {
                    (_, 'n') => value.push('\n'),
                    (_, c) => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        s = s[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// Families gathered from other processes, each sample with a label that
/// says where it came from.
#[derive(Debug, Default)]
pub struct Reexport {
    families: BTreeMap<String, Family>,
}

impl Reexport {
    /// Adds the families of one source, with `label="source"` put first on
    /// every sample. Only families named `prefix...` are taken, except those
    /// starting with one of `reserved` (the exporter's own families); a
    /// family whose type differs from the one already gathered under its
    /// name, and a sample that already has `label`, are skipped.
    pub fn add(&mut self, label: &str, source: &str, text: &str, prefix: &str, reserved: &[&str]) {
        for (name, fam) in parse(text) {
            if !name.starts_with(prefix) || reserved.iter().any(|r| name.starts_with(r)) {
                continue;
            }
            let into = self.families.entry(name).or_insert_with(|| Family { kind: fam.kind, help: fam.help.clone(), samples: Vec::new() });
            if into.kind != fam.kind {
                continue;
            }
            for mut s in fam.samples {
                if s.labels.iter().any(|(k, _)| k == label) {
                    continue;
                }
                s.labels.insert(0, (label.to_string(), source.to_string()));
                into.samples.push(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_parsed_back() {
        let mut e = Exposition::new();
        e.family("rayvault_x_total", Kind::Counter, "A help\nline");
        e.sample("rayvault_x_total", &[("a", "q\"uote"), ("b", "back\\slash\nnl")], 3.0);
        e.sample("rayvault_x_total", &[], 1.5);
        let text = e.finish();
        assert!(text.contains(r#"rayvault_x_total{a="q\"uote",b="back\\slash\nnl"} 3"#), "{text}");
        let parsed = parse(&text);
        let f = &parsed["rayvault_x_total"];
        assert_eq!(f.kind, Kind::Counter);
        assert_eq!(f.help, "A help\nline");
        assert_eq!(f.samples[0].labels, vec![("a".into(), "q\"uote".into()), ("b".into(), "back\\slash\nnl".into())]);
        assert_eq!(f.samples[1].value, 1.5);
    }

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::default();
        for v in [0.05, 0.3, 7.0, 99999.0] {
            h.observe(v);
        }
        let mut e = Exposition::new();
        e.family("rayvault_d_seconds", Kind::Histogram, "d");
        e.histogram("rayvault_d_seconds", &[("step", "S")], &h);
        let parsed = parse(&e.finish());
        let s = &parsed["rayvault_d_seconds"].samples;
        let bucket = |le: &str| s.iter().find(|x| x.labels.iter().any(|(k, v)| k == "le" && v == le)).unwrap().value;
        assert_eq!(bucket("0.1"), 1.0);
        assert_eq!(bucket("0.5"), 2.0);
        assert_eq!(bucket("10"), 3.0);
        assert_eq!(bucket("3600"), 3.0);
        assert_eq!(bucket("+Inf"), 4.0);
        assert_eq!(s.iter().find(|x| x.name == "rayvault_d_seconds_count").unwrap().value, 4.0);
    }

    #[test]
    fn reexport_adds_the_label_and_keeps_out_what_it_must() {
        let worker = "# HELP rayvault_jobs_total Jobs.\n# TYPE rayvault_jobs_total counter\n\
                      rayvault_jobs_total{step=\"A\",state=\"succeeded\"} 2\n\
                      rayvault_jobs_total{node=\"forged\"} 9\n\
                      rayvault_jobs_total{broken 1\n\
                      stray_sample 4\n\
                      # TYPE rayvault_node_up gauge\nrayvault_node_up 1\n\
                      # TYPE other_metric gauge\nother_metric 1\n";
        let mut r = Reexport::default();
        r.add("node", "w1", worker, "rayvault_", &["rayvault_node_"]);
        r.add("node", "w2", worker, "rayvault_", &["rayvault_node_"]);
        let mut e = Exposition::new();
        e.reexport(&r);
        let text = e.finish();
        let parsed = parse(&text);
        assert_eq!(parsed.keys().collect::<Vec<_>>(), vec!["rayvault_jobs_total"], "{text}");
        let samples = &parsed["rayvault_jobs_total"].samples;
        assert_eq!(samples.len(), 2, "{text}");
        assert_eq!(samples[0].labels[0], ("node".to_string(), "w1".to_string()));
        assert_eq!(samples[1].labels[0], ("node".to_string(), "w2".to_string()));
        assert_eq!(text.matches("# TYPE rayvault_jobs_total").count(), 1);
    }
}
