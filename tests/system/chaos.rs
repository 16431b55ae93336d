//! Chaos: instances of one function are SIGKILLed every 2 s for 30 s while two functions take
//! steady load over keep-alive connections. Only requests in flight on a killed instance may
//! fail, each with the JSON error naming the instance and its exit; the other function sees no
//! error at all, and the killed one answers again after every kill.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kappa_test_support::eventually_blocking;

use crate::harness::{Platform, http, tail};

/// How long instances are killed for, and how often.
const CHAOS_FOR: Duration = Duration::from_secs(30);
const KILL_EVERY: Duration = Duration::from_secs(2);
/// Client loops per function.
const CLIENTS_A: usize = 3;
const CLIENTS_B: usize = 2;

/// One request as a client saw it.
#[derive(Debug)]
struct Outcome {
    function: &'static str,
    start: Instant,
    end: Instant,
    result: Result<(u16, Vec<u8>), String>,
}

/// One kill: which instance, its processes, when the signal went out and when they were gone.
#[derive(Debug)]
struct Kill {
    instance: String,
    pids: Vec<i32>,
    sent: Instant,
    gone: Instant,
}

/// A keep-alive HTTP/1.1 client on one connection (reconnecting only when the server closed it
/// after a complete response).
struct Client {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(addr: SocketAddr) -> Self {
        Client { addr, conn: None }
    }

    fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), String> {
        if self.conn.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .map_err(|e| format!("connect: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .map_err(|e| e.to_string())?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        let result = conn
            .get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))
            .and_then(|()| read_response(conn));
        match &result {
            Ok((_, _, keep)) if *keep => {}
            _ => self.conn = None,
        }
        result.map(|(status, body, _)| (status, body))
    }
}

/// Reads one response: status, body (Content-Length or chunked), and whether the connection
/// stays open.
fn read_response(conn: &mut BufReader<TcpStream>) -> Result<(u16, Vec<u8>, bool), String> {
    let mut line = String::new();
    let line_of = |conn: &mut BufReader<TcpStream>, line: &mut String| {
        line.clear();
        match conn.read_line(line) {
            Ok(0) => Err("connection closed before a complete response".to_string()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    };
    line_of(conn, &mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut length, mut chunked, mut keep) = (None, false, true);
    loop {
        line_of(conn, &mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => keep = !value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line_of(conn, &mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {line:?}"))?;
            let mut chunk = vec![0u8; size + 2];
            conn.read_exact(&mut chunk)
                .map_err(|e| format!("read chunk: {e}"))?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        conn.read_exact(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
    } else {
        conn.read_to_end(&mut body)
            .map_err(|e| format!("read body: {e}"))?;
        keep = false;
    }
    Ok((status, body, keep))
}

/// Client loops sending `path` until `stop`, with `pause` between requests.
fn load(
    router: SocketAddr,
    function: &'static str,
    path: &'static str,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Outcome>> {
    std::thread::spawn(move || {
        let mut client = Client::new(router);
        let mut out = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let start = Instant::now();
            let result = client.get(path);
            out.push(Outcome {
                function,
                start,
                end: Instant::now(),
                result,
            });
            std::thread::sleep(pause);
        }
        out
    })
}

/// The ids of the instances serving `function` (`namespace/name`), per the router.
fn instances_of(p: &Platform, function: &str) -> Vec<String> {
    let auth = format!("Bearer {}", p.token());
    let Ok(r) = http(
        p.admin,
        "GET",
        "/debug/endpoints",
        &[("Authorization", &auth)],
        b"",
    ) else {
        return Vec::new();
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
        return Vec::new();
    };
    body["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["function"] == function)
        .flat_map(|f| f["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["draining"] != true && e["exit"].is_null())
        .filter_map(|e| e["instance"].as_str().map(str::to_owned))
        .collect()
}

/// The mark (`KAPPA_INSTANCE_ID`) the processes of `instance` carry: its id, or for an instance
/// started from a spare sandbox the spare's, as the local backend's state file records it.
fn mark_of(p: &Platform, instance: &str) -> String {
    let mut files = vec![p.data_dir.path().join("instances.json")];
    if let Ok(entries) = std::fs::read_dir(p.data_dir.path()) {
        files.extend(entries.flatten().map(|e| e.path().join("instances.json")));
    }
    files
        .iter()
        .filter_map(|f| std::fs::read(f).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .flat_map(|state| state["instances"].as_array().cloned().unwrap_or_default())
        .find(|r| r["id"] == instance)
        .and_then(|r| r["mark"].as_str().map(str::to_owned))
        .unwrap_or_else(|| instance.to_owned())
}

/// Every process marked as belonging to `instance` (the platform sets `KAPPA_INSTANCE_ID` on
/// every process of an instance it starts; see [`mark_of`]).
fn processes_of(p: &Platform, instance: &str) -> Vec<i32> {
    let wanted = format!("KAPPA_INSTANCE_ID={}", mark_of(p, instance));
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|entry| entry == wanted.as_bytes())
            })
        })
        .collect()
}

/// Whether `pid` is gone (or a zombie waiting for its parent).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// SIGKILLs every process of one live instance of `function` and waits until they are gone.
fn kill_one(p: &Platform, function: &str) -> Kill {
    let (instance, pids) = eventually_blocking(
        Duration::from_secs(20),
        "an instance of the function to kill",
        || {
            instances_of(p, function).into_iter().find_map(|id| {
                let pids = processes_of(p, &id);
                (!pids.is_empty()).then_some((id, pids))
            })
        },
    );
    let sent = Instant::now();
    // A process may end by itself meanwhile (its parent was killed first): `kill` then fails
    // for that one and still signals the others.
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .args(pids.iter().map(i32::to_string))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run kill");
    eventually_blocking(
        Duration::from_secs(10),
        "the killed processes to go",
        || pids.iter().all(|pid| gone(*pid)).then_some(()),
    );
    Kill {
        instance,
        pids,
        sent,
        gone: Instant::now(),
    }
}

#[test]
fn killing_instances_fails_only_their_in_flight_requests() {
    let p = Platform::start();
    p.python_env(&[]);
    // A takes a moment per request, so kills find requests in flight; B answers at once.
    p.deploy("a", "testdata/python/slow.py", "/a", &[]);
    p.deploy("b", "examples/hello/hello.py", "/b", &[]);
    assert_eq!(p.get("/a?s=0").status, 200);
    assert_eq!(p.get("/b").status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..CLIENTS_A {
        loops.push(load(
            p.router,
            "a",
            "/a?s=0.2",
            Duration::from_millis(10),
            stop.clone(),
        ));
    }
    for _ in 0..CLIENTS_B {
        loops.push(load(
            p.router,
            "b",
            "/b",
            Duration::from_millis(20),
            stop.clone(),
        ));
    }

    let started = Instant::now();
    let mut kills = Vec::new();
    let mut next = started + KILL_EVERY;
    while started.elapsed() < CHAOS_FOR {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        next += KILL_EVERY;
        let kill = kill_one(&p, "default/a");
        // A request sent after the instance is gone must be served.
        let mut probe = Client::new(p.router);
        let after = probe.get("/a?s=0");
        assert!(
            matches!(&after, Ok((200, _))),
            "A did not recover after killing {}: {after:?}\n{}",
            kill.instance,
            tail(&p.log(), 40)
        );
        kills.push(kill);
    }
    stop.store(true, Ordering::SeqCst);
    let outcomes: Vec<Outcome> = loops
        .into_iter()
        .flat_map(|h| h.join().expect("a load loop panicked"))
        .collect();

    let killed: BTreeSet<&str> = kills.iter().map(|k| k.instance.as_str()).collect();
    assert!(
        kills.len() >= 10,
        "only {} kills in {CHAOS_FOR:?}",
        kills.len()
    );
    let mut served = [0usize; 2];
    let mut failed_in_flight = 0;
    for o in &outcomes {
        let ok = matches!(&o.result, Ok((200, _)));
        if ok {
            served[usize::from(o.function == "b")] += 1;
            continue;
        }
        assert_eq!(
            o.function,
            "a",
            "function B failed during the chaos: {:?}\n{}",
            o.result,
            tail(&p.log(), 40)
        );
        let (status, body) = o
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("A failed without an HTTP answer: {e}"));
        let text = String::from_utf8_lossy(body);
        assert_eq!(*status, 502, "A answered {status}: {text}");
        let json: serde_json::Value =
            serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        assert_eq!(json["error"]["code"], "instance_failed", "{text}");
        assert!(
            json["error"]["invocationId"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "no invocation id: {text}"
        );
        let message = json["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("signal 9") || message.contains("SIGKILL"),
            "the message does not name the kill: {text}"
        );
        // In flight on a killed instance: the error names one, and the request was under way
        // while it died.
        let kill = kills
            .iter()
            .find(|k| message.contains(&k.instance))
            .unwrap_or_else(|| panic!("the error names no killed instance ({killed:?}): {text}"));
        assert!(
            o.start <= kill.gone && o.end >= kill.sent,
            "a request that was not in flight when {} (pids {:?}) was killed failed: {text}",
            kill.instance,
            kill.pids
        );
        failed_in_flight += 1;
    }
    assert!(served[0] > 0 && served[1] > 0, "served {served:?}");
    eprintln!(
        "chaos: {} kills; A served {}, failed in flight {failed_in_flight}; B served {}",
        kills.len(),
        served[0],
        served[1]
    );
}
