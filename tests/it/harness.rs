//! Test helpers: a scriptable HTTP target server, a `shoal run` child process, and
//! polling with deadlines (never fixed sleeps as assertions). Requests to a node go
//! over plain HTTP, or HTTPS in the cluster TLS test mode (`crate::pki`), through
//! [`connect`].

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What a test target answers on one path.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn text(body: &str) -> Reply {
        Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4".into(),
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }
}

/// A request a test target received: path with query, and lower-cased headers.
pub type Request = (String, HashMap<String, String>);

/// A tiny HTTP server whose replies tests can change while it runs. Each path has one
/// reply; unknown paths get 404. Requests are recorded.
#[derive(Clone)]
pub struct TargetServer {
    pub addr: SocketAddr,
    replies: Arc<Mutex<HashMap<String, Reply>>>,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl TargetServer {
    pub fn start() -> TargetServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test target");
        let addr = listener.local_addr().expect("local addr");
        let srv = TargetServer {
            addr,
            replies: Arc::default(),
            requests: Arc::default(),
        };
        let s = srv.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                thread::spawn(move || s.serve(stream));
            }
        });
        srv
    }

    pub fn set(&self, path: &str, reply: Reply) {
        self.replies.lock().unwrap().insert(path.to_string(), reply);
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    fn serve(&self, mut stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        let mut lines = head.split("\r\n");
        let req_line = lines.next().unwrap_or("");
        let path_q = req_line.split(' ').nth(1).unwrap_or("/").to_string();
        let path = path_q.split('?').next().unwrap_or("/").to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        self.requests.lock().unwrap().push((path_q, headers));
        let reply = self.replies.lock().unwrap().get(&path).cloned();
        let reply = reply.unwrap_or(Reply {
            status: 404,
            content_type: "text/plain".into(),
            body: b"not found".to_vec(),
            delay: Duration::ZERO,
            headers: Vec::new(),
        });
        if !reply.delay.is_zero() {
            thread::sleep(reply.delay);
        }
        let reason = match reply.status {
            200 => "OK",
            404 => "Not Found",
            500 => "Internal Server Error",
            _ => "Status",
        };
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            reply.status,
            reason,
            reply.content_type,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&reply.body);
    }
}

/// A free loopback port for a child to bind, never the same twice in a test process.
/// Ports come from a range of 64 this process reserves ([`free_port_range`]: below the
/// ephemeral range, locked against other test processes): a port the OS hands out for
/// `:0` could be handed out again, or taken by an outgoing connection, before the
/// child binds it — two nodes of one cluster once got the same port that way.
pub fn free_port() -> u16 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU16, Ordering};
    static PORTS: OnceLock<(PortRange, AtomicU16)> = OnceLock::new();
    let (range, next) = PORTS.get_or_init(|| (free_port_range(64), AtomicU16::new(0)));
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        assert!(i < 64, "a test process asked for more than 64 ports");
        let port = range.base + i;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `n` consecutive free loopback ports for a child that binds them itself, reserved for
/// as long as this value lives.
pub struct PortRange {
    pub base: u16,
    _lock: std::fs::File,
}

/// Reserves `n` (≤ 64) consecutive free loopback ports. They are taken below Linux's
/// ephemeral range (32768–60999), so that no connection picks one as its local port,
/// in slots of 64 that one test process at a time holds through a file lock (released
/// when it ends, however it ends), so that two tests checking at once cannot both pick
/// the same ports before their children bind them.
pub fn free_port_range(n: u16) -> PortRange {
    const LOW: u16 = 21_000;
    const SLOTS: u16 = 170;
    assert!(n <= 64, "at most 64 ports in a range");
    let dir = std::env::temp_dir().join("shoal-it-ports");
    std::fs::create_dir_all(&dir).unwrap();
    let first = (std::process::id() % SLOTS as u32) as u16;
    loop {
        for k in (0..SLOTS).map(|i| (first + i) % SLOTS) {
            let base = LOW + k * 64;
            let lock = std::fs::File::create(dir.join(format!("{base}.lock"))).unwrap();
            if lock.try_lock().is_err() {
                continue;
            }
            let held: Vec<_> = (0..n)
                .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
                .collect();
            if held.len() == n as usize {
                return PortRange { base, _lock: lock };
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `f` returns `Ok`, polling every 100 ms, or panics after `timeout`
/// with `what` and the last observation.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Result<T, String>) -> T {
    try_wait_for(what, timeout, f).unwrap_or_else(|e| panic!("{e}"))
}

/// [`wait_for`] that returns the failure (for a caller that adds context, such as the
/// nodes' logs) instead of panicking.
pub fn try_wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
        thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "timed out after {timeout:?} waiting for {what}; last: {last}"
    ))
}

/// A `shoal run` child process, killed on drop.
pub struct Node {
    pub child: Child,
    /// Host the node listens on (127.0.0.1 unless started with [`Node::spawn_on`]).
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Started with cluster TLS by the cluster TLS test mode: it serves HTTPS only.
    pub tls: bool,
}

/// In a node's `extra` flags: no cluster TLS, even in the cluster TLS test mode
/// (`crate::pki`); for tests of plain HTTP on purpose (say why where it is used).
pub const NO_CLUSTER_TLS: &str = "--test.no-cluster-tls";

pub fn shoal_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

impl Node {
    /// Starts `shoal run` with `config_yaml` in `dir` and waits until it is ready.
    pub fn start(dir: &Path, config_yaml: &str, extra: &[&str]) -> Node {
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_yaml).unwrap();
        Node::start_with(dir, &config, &dir.join("data"), free_port(), extra)
    }

    pub fn start_with(
        dir: &Path,
        config: &Path,
        data_dir: &Path,
        port: u16,
        extra: &[&str],
    ) -> Node {
        let mut node = Node::spawn_on(dir, config, data_dir, "127.0.0.1", port, extra);
        node.wait_ready();
        node
    }

    /// Starts `shoal run` listening on `host:port` without waiting for it to be ready
    /// (call [`Node::wait_ready`]). The log goes to `dir/shoal-<host>-<port>.log`. In the
    /// cluster TLS test mode a node with `--cluster.seeds` and no `--cluster.tls.*` of
    /// its own gets the mode's (unless [`NO_CLUSTER_TLS`]).
    pub fn spawn_on(
        dir: &Path,
        config: &Path,
        data_dir: &Path,
        host: &str,
        port: u16,
        extra: &[&str],
    ) -> Node {
        let log = if host == "127.0.0.1" {
            dir.join(format!("shoal-{port}.log"))
        } else {
            dir.join(format!("shoal-{host}-{port}.log"))
        };
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let has = |flag: &str| extra.contains(&flag);
        let mut args: Vec<String> = extra
            .iter()
            .filter(|f| **f != NO_CLUSTER_TLS)
            .map(|f| f.to_string())
            .collect();
        let mode = crate::pki::cluster_tls().filter(|_| {
            has("--cluster.seeds") && !has("--cluster.tls.cert-file") && !has(NO_CLUSTER_TLS)
        });
        if let Some(m) = mode {
            args.extend(m.node_flags(host, port));
        }
        let child = Command::new(shoal_bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("{host}:{port}"))
            .args(&args)
            // No NO_COLOR: a node logging to a file writes no colour codes by itself
            // (lifecycle::logs_to_a_file_are_plain_text_without_colour_codes).
            .env_remove("NO_COLOR")
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn shoal");
        Node {
            child,
            host: host.to_owned(),
            port,
            data_dir: data_dir.to_path_buf(),
            config: config.to_path_buf(),
            log,
            tls: mode.is_some(),
        }
    }

    /// `host:port` of the node's HTTP server.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `http://host:port/path`, or `https://` for a node with cluster TLS.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}{}", self.host, self.port, path)
    }

    /// A connection to the node's HTTP server (TLS for a node with cluster TLS).
    pub fn connect(&self) -> std::io::Result<Conn> {
        connect(&self.addr(), self.tls)
    }

    /// The `shoal cluster` flags that reach this node: `--node`, and for a node with
    /// cluster TLS `https://` and the test CA (`--cluster.tls.ca-file`).
    pub fn cli_target(&self) -> Vec<String> {
        match crate::pki::cluster_tls().filter(|_| self.tls) {
            None => vec!["--node".into(), self.addr()],
            Some(m) => vec![
                "--node".into(),
                format!("https://{}", self.addr()),
                "--cluster.tls.ca-file".into(),
                m.ca_file(),
            ],
        }
    }

    /// Waits until `/-/ready` answers 200; panics with the log if the process exits.
    pub fn wait_ready(&mut self) {
        let url = self.url("/-/ready");
        let log = self.log.clone();
        let child = &mut self.child;
        wait_for("shoal to become ready", Duration::from_secs(60), || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "shoal exited early with {st}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            match http_get(&url) {
                Ok((200, _)) => Ok(()),
                Ok((c, b)) => Err(format!("{c} {b}")),
                Err(e) => Err(e),
            }
        });
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (code, body) = http_get(&self.url(path)).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path} ({code}): invalid JSON {e}: {body}"))
    }

    /// Instant query at "now"; returns the `data.result` array.
    pub fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let v = self.get_json(&format!("/api/v1/query?query={}", urlencode(q)));
        assert_eq!(v["status"], "success", "query {q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Instant query at the fixed time `t` (seconds since the epoch); returns the
    /// `data.result` array.
    pub fn query_at(&self, q: &str, t: f64) -> Vec<serde_json::Value> {
        let v = self.get_json(&format!("/api/v1/query?query={}&time={t:.3}", urlencode(q)));
        assert_eq!(v["status"], "success", "query {q} at {t}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of the first sample of `/metrics` whose line starts with `prefix`.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let (_, body) = http_get(&self.url("/metrics")).ok()?;
        body.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Instant query at "now" over this node's own data only (`local=1`, no cluster
    /// fan-out); returns the `data.result` array.
    pub fn query_local(&self, q: &str) -> Vec<serde_json::Value> {
        let v = self.get_json(&format!("/api/v1/query?local=1&query={}", urlencode(q)));
        assert_eq!(v["status"], "success", "query {q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("shoal did not exit within 30 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }
}

/// A child in a process group of its own, killed with everything it started (a demo's
/// nodes) when dropped, so that a failing test leaves no process behind.
pub struct GroupChild(pub Child);

impl GroupChild {
    pub fn spawn(cmd: &mut Command) -> GroupChild {
        use std::os::unix::process::CommandExt;
        GroupChild(cmd.process_group(0).spawn().unwrap())
    }
}

impl std::ops::Deref for GroupChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for GroupChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A blocking HTTP GET/POST over a raw socket (keeps the tests free of an HTTP client
/// dependency). Returns (status, body).
pub fn http(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(u16, String), String> {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| ("Content-Type", ct))
        .into_iter()
        .collect();
    http_with_headers(method, url, &headers, body).map(|r| (r.status, r.body))
}

/// An answer read by [`http_with_headers`].
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Status line and headers, header names lower-cased.
    pub head: String,
    pub body: String,
}

impl HttpAnswer {
    /// The value of response header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == name).then(|| v.trim())
        })
    }
}

/// [`http`] with extra request headers (e.g. `Authorization`), returning the response
/// head too. A write error while sending the body is not an error: a server may answer
/// and close before reading it; whatever it answered is returned.
pub fn http_with_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpAnswer, String> {
    let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err(format!("only http:// and https:// URLs: {url}")),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = connect(hostport, tls).map_err(|e| e.to_string())?;
    s.tcp().set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    if let Err(e) = s.read_to_end(&mut resp)
        && resp.is_empty()
    {
        return Err(e.to_string());
    }
    parse_answer(&resp)
}

/// Parses a whole HTTP/1.1 response (status line, headers, body; chunked bodies are
/// decoded).
pub fn parse_answer(resp: &[u8]) -> Result<HttpAnswer, String> {
    let text = String::from_utf8_lossy(resp).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("bad status line")?;
    let head: String = head
        .lines()
        .enumerate()
        .map(|(i, l)| match (i, l.split_once(':')) {
            (0, _) | (_, None) => format!("{l}\n"),
            (_, Some((k, v))) => format!("{}:{v}\n", k.to_ascii_lowercase()),
        })
        .collect();
    let chunked = head.contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(HttpAnswer { status, head, body })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn http_get(url: &str) -> Result<(u16, String), String> {
    http("GET", url, None, b"")
}

/// A temp dir kept for the test's lifetime.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shoal-it-")
        .tempdir()
        .unwrap()
}

/// Shorthand: the metric value of the first vector sample as f64.
pub fn value_of(sample: &serde_json::Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

/// `method path` on `node` with a binary `body` and, when given, the cluster secret
/// `token` as bearer: the status and the raw (binary) answer body.
pub fn internal_request(
    node: &Node,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut s = node.connect().unwrap();
    s.tcp()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        node.addr(),
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&resp[..end]).to_ascii_lowercase();
    assert!(
        !head.contains("transfer-encoding: chunked"),
        "a chunked answer: {head}"
    );
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (code, resp[end..].to_vec())
}

/// A connection to a node: plain TCP, or TLS over it (the client of the cluster TLS
/// test mode, `crate::pki`).
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

/// Connects to `host:port`; with `tls`, as the cluster TLS test mode's client (trusting
/// its CA for `host`, presenting its certificate). The handshake happens on first use.
pub fn connect(hostport: &str, tls: bool) -> std::io::Result<Conn> {
    let tcp = TcpStream::connect(hostport)?;
    if !tls {
        return Ok(Conn::Plain(tcp));
    }
    let mode =
        crate::pki::cluster_tls().expect("HTTPS to a node outside the cluster TLS test mode");
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(mode.client(), name).map_err(std::io::Error::other)?;
    Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

impl Conn {
    /// The TCP stream underneath (timeouts).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            // A server that closes without a TLS close_notify has ended its answer as
            // over plain TCP (the tests read answers to the end of the connection).
            Conn::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}
