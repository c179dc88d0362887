//! Parse throughput of `model::textparse` on a realistic ~1 MB scrape: 500 metric
//! families of 20 series with 4 labels each (every 25th family a histogram).
//!
//! - `full`: every series builds its `Labels` (the scraper's path for new series);
//! - `raw`: only `raw`, value and timestamp are read (validating every label block);
//! - `known`: `raw` through `Parser::next_with` with every series known (the scraper's
//!   path for cached series: label blocks found, not validated);
//! - `openmetrics_raw`: the same body in OpenMetrics form, cached path.
//!
//! Samples/s = samples per scrape (printed at start) / time per iteration.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shoal::model::textparse::{Entry, Format, Parser};

const FAMILIES: usize = 500;
const SERIES_PER_FAMILY: usize = 20;

fn exposition(format: Format) -> (String, usize) {
    let methods = ["GET", "POST", "PUT", "DELETE"];
    let codes = ["200", "404", "500", "503", "301"];
    let mut out = String::with_capacity(1 << 20);
    let mut samples = 0;
    for f in 0..FAMILIES {
        let histogram = f % 25 == 0;
        let counter = f % 2 == 0;
        let name = format!("app_requests_{f:03}");
        let (family, kind) = if histogram {
            (format!("{name}_seconds"), "histogram")
        } else if counter {
            (name.clone(), "counter")
        } else {
            (name.clone(), "gauge")
        };
        out.push_str(&format!(
            "# HELP {family} Requests handled, by method and code.\n"
        ));
        out.push_str(&format!("# TYPE {family} {kind}\n"));
        if histogram {
            let les = [
                "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
                "15", "20", "30", "60", "120", "240", "+Inf",
            ];
            for (i, le) in les.iter().enumerate() {
                out.push_str(&format!(
                    "{family}_bucket{{method=\"GET\",handler=\"/api/v1/query\",instance=\"10.0.{f}.1:9100\",le=\"{le}\"}} {}\n",
                    i * 37
                ));
            }
            out.push_str(&format!(
                "{family}_sum{{method=\"GET\",handler=\"/api/v1/query\",instance=\"10.0.{f}.1:9100\"}} 1234.5678\n"
            ));
            out.push_str(&format!(
                "{family}_count{{method=\"GET\",handler=\"/api/v1/query\",instance=\"10.0.{f}.1:9100\"}} 629\n"
            ));
            samples += les.len() + 2;
            continue;
        }
        let sample_name = match (format, counter) {
            (Format::OpenMetrics, true) => format!("{family}_total"),
            _ => family.clone(),
        };
        for s in 0..SERIES_PER_FAMILY {
            let value = ((f * 7919 + s * 104_729) % 100_000) as f64 / 2.0;
            let ts = match format {
                Format::PromText => format!(" {}", 1_700_000_000_000_i64 + s as i64),
                Format::OpenMetrics => format!(" 1700000000.{:03}", s),
            };
            out.push_str(&format!(
                "{sample_name}{{method=\"{}\",handler=\"/api/v1/ep{}\",code=\"{}\",instance=\"10.0.{}.{}:9100\"}} {value}{ts}\n",
                methods[s % 4],
                s % 7,
                codes[s % 5],
                f % 256,
                s,
            ));
            samples += 1;
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    (out, samples)
}

fn parse_full(buf: &[u8], format: Format) -> usize {
    let mut p = Parser::new(buf, format);
    let mut n = 0;
    while let Some(e) = p.next().expect("bench input parses") {
        if let Entry::Series(s) = e {
            black_box(s.labels());
            black_box((s.value, s.timestamp));
            n += 1;
        }
    }
    n
}

fn parse_raw(buf: &[u8], format: Format) -> usize {
    let mut p = Parser::new(buf, format);
    let mut n = 0;
    while let Some(e) = p.next().expect("bench input parses") {
        if let Entry::Series(s) = e {
            black_box((s.raw, s.value, s.timestamp));
            n += 1;
        }
    }
    n
}

fn parse_known(buf: &[u8], format: Format) -> usize {
    let mut p = Parser::new(buf, format);
    let mut n = 0;
    let mut known = |raw: &[u8]| black_box(!raw.is_empty());
    while let Some(e) = p.next_with(&mut known).expect("bench input parses") {
        if let Entry::Series(s) = e {
            black_box((s.raw, s.value, s.timestamp));
            n += 1;
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let (text, text_samples) = exposition(Format::PromText);
    let (om, om_samples) = exposition(Format::OpenMetrics);
    assert_eq!(parse_full(text.as_bytes(), Format::PromText), text_samples);
    assert_eq!(parse_raw(om.as_bytes(), Format::OpenMetrics), om_samples);
    assert_eq!(parse_known(text.as_bytes(), Format::PromText), text_samples);
    eprintln!(
        "prom text: {} bytes, {text_samples} samples; openmetrics: {} bytes, {om_samples} samples",
        text.len(),
        om.len()
    );

    let mut g = c.benchmark_group("textparse");
    g.measurement_time(Duration::from_secs(4));
    g.sample_size(40);
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("prom_text/full", |b| {
        b.iter(|| parse_full(black_box(text.as_bytes()), Format::PromText))
    });
    g.bench_function("prom_text/raw", |b| {
        b.iter(|| parse_raw(black_box(text.as_bytes()), Format::PromText))
    });
    g.bench_function("prom_text/known", |b| {
        b.iter(|| parse_known(black_box(text.as_bytes()), Format::PromText))
    });
    g.throughput(Throughput::Bytes(om.len() as u64));
    g.bench_function("openmetrics/raw", |b| {
        b.iter(|| parse_raw(black_box(om.as_bytes()), Format::OpenMetrics))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
