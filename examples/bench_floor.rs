//! Benchmark driver for the floor of scenario 1 (see docs/benchmarks.md):
//! one keep-alive HTTP/1.1 request to nginx on loopback plus one fsync, the
//! least any durable networked dispatch can cost on this machine.
//!
//! It uses only the standard library so that nothing of ours is measured.
//! Run by bench/run.py; prints JSON on stdout.
//!
//! ```text
//! bench_floor latency PORT N FILE            -> {"latency_s": [..]}
//! bench_floor rate PORT CONCURRENCY TOTAL DIR -> {"per_s": x, "elapsed_s": y}
//! ```

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

/// One keep-alive connection that sends `GET /ping` and reads the answer.
struct KeepAlive {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn connect(port: u16) -> std::io::Result<KeepAlive> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        Ok(KeepAlive { reader: BufReader::new(s.try_clone()?), writer: s })
    }

    /// Sends one request and reads the whole response (status, headers and
    /// a Content-Length body).
    fn ping(&mut self) -> std::io::Result<()> {
        self.writer.write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut line = String::new();
        let mut len = 0usize;
        let mut first = true;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "nginx closed the connection"));
            }
            if first {
                if !line.starts_with("HTTP/1.1 200") {
                    return Err(std::io::Error::other(format!("unexpected status line {line:?}")));
                }
                first = false;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().map_err(std::io::Error::other)?;
                }
            }
        }
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body)
    }
}

/// Writes a small record at the start of `file` and fsyncs it: the durable
/// state write of one job.
fn durable_write(file: &File, i: usize) -> std::io::Result<()> {
    let record = format!("{{\"job\":{i},\"state\":\"queued\"}}{}\n", " ".repeat(160));
    file.write_all_at(record.as_bytes(), 0)?;
    file.sync_all()
}

fn open_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).truncate(false).write(true).open(path)
}

fn latency(port: u16, n: usize, path: &Path) -> std::io::Result<String> {
    let mut conn = KeepAlive::connect(port)?;
    let file = open_file(path)?;
    for i in 0..50 {
        conn.ping()?;
        durable_write(&file, i)?;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        conn.ping()?;
        durable_write(&file, i)?;
        out.push(t0.elapsed().as_secs_f64());
    }
    Ok(serde_json::json!({ "latency_s": out }).to_string())
}

fn rate(port: u16, concurrency: usize, total: usize, dir: &Path) -> std::io::Result<String> {
    let per = total.div_ceil(concurrency.max(1));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..concurrency)
        .map(|c| {
            let path = dir.join(format!("floor-{c}.rec"));
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut conn = KeepAlive::connect(port)?;
                let file = open_file(&path)?;
                for i in 0..per {
                    conn.ping()?;
                    durable_write(&file, i)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| std::io::Error::other("a floor thread panicked"))??;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    Ok(serde_json::json!({ "per_s": (per * concurrency) as f64 / elapsed, "elapsed_s": elapsed }).to_string())
}

fn parse<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i).and_then(|s| s.parse().ok()).ok_or_else(|| format!("argument {i} ({what}) is missing or invalid"))
}

fn run(args: &[String]) -> Result<String, String> {
    match args.get(1).map(String::as_str) {
        Some("latency") => {
            let port = parse(args, 2, "PORT")?;
            let n = parse(args, 3, "N")?;
            let file: String = parse(args, 4, "FILE")?;
            latency(port, n, Path::new(&file)).map_err(|e| e.to_string())
        }
        Some("rate") => {
            let port = parse(args, 2, "PORT")?;
            let c = parse(args, 3, "CONCURRENCY")?;
            let total = parse(args, 4, "TOTAL")?;
            let dir: String = parse(args, 5, "DIR")?;
            rate(port, c, total, Path::new(&dir)).map_err(|e| e.to_string())
        }
        _ => Err("usage: bench_floor latency PORT N FILE | rate PORT CONCURRENCY TOTAL DIR".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench_floor: {e}");
            ExitCode::FAILURE
        }
    }
}
