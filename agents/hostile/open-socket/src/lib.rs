//! Tries the network and reports what happened:
//! `{"attempts": [{"what": ..., "ok": bool, "detail": ...}]}`.
//!
//! Input `{"port": n}`: the TCP port on 127.0.0.1 to connect to.

use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use serde_json::json;
use taskrun_agent_sdk::{Agent, Error, export_agent};

fn attempt<T: std::fmt::Debug>(what: &str, result: std::io::Result<T>) -> serde_json::Value {
    match result {
        Ok(value) => json!({ "what": what, "ok": true, "detail": format!("{value:?}") }),
        Err(e) => json!({ "what": what, "ok": false, "detail": e.to_string() }),
    }
}

struct OpenSocket;

impl Agent for OpenSocket {
    fn run(input: String) -> Result<String, Error> {
        let input: serde_json::Value =
            serde_json::from_str(&input).map_err(|e| Error::new(format!("bad input: {e}")))?;
        let port = input
            .get("port")
            .and_then(|p| p.as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or("input needs a port")?;
        let target = ("127.0.0.1", port);
        let attempts = vec![
            attempt("tcp connect", TcpStream::connect(target).map(|_| ())),
            attempt(
                "tcp connect with timeout",
                target
                    .to_socket_addrs()
                    .and_then(|mut addrs| addrs.next().ok_or_else(|| std::io::Error::other("no address")))
                    .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
                    .map(|_| ()),
            ),
            attempt("udp bind", UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"hi", target))),
            attempt("lookup localhost", ("localhost", 80).to_socket_addrs().map(|a| a.count())),
        ];
        Ok(json!({ "attempts": attempts }).to_string())
    }
}

export_agent!(OpenSocket);
