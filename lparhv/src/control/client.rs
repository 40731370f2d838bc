//! The blocking client of the control socket (the CLI's side): one
//! request and its reply ([`request`], [`call`]), or a request that keeps
//! the connection open and streams ([`follow`]).

use super::protocol::{ControlReply, ControlRequest};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

/// A blocking client (the CLI's): sends one request, returns the reply.
pub fn request(path: &Path, request: &ControlRequest) -> Result<ControlReply> {
    let stream = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("cannot reach the lparhv daemon at {} (is `lparhv up` running?)", path.display()))?;
    // rem_pci may wait for an eject (up to 10 min by config) and a fence.
    stream.set_read_timeout(Some(Duration::from_secs(660)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    if reader.read_line(&mut answer)? == 0 {
        bail!("the daemon closed the control connection without answering");
    }
    serde_json::from_str(&answer).with_context(|| format!("unreadable reply {answer:?}"))
}

/// Like [`request`] but turns a refusal into an error.
pub fn call(path: &Path, req: &ControlRequest) -> Result<Value> {
    let reply = request(path, req)?;
    if reply.ok {
        Ok(reply.result.unwrap_or(Value::Null))
    } else {
        bail!("{}", reply.error.unwrap_or_else(|| "refused".into()))
    }
}

/// Why [`follow`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum FollowEnd {
    /// `keep_going` said stop (the user detached).
    Stopped,
    /// The daemon closed the connection (it stopped).
    Closed,
    /// The daemon dropped this follower; its notice.
    Dropped(String),
}

/// Sends a request that keeps the connection open (`follow_events`) and
/// hands every line after the first reply to `on_item`, until the daemon
/// closes the connection or drops the follower, or `keep_going` (asked at
/// least every 200 ms) returns false.
pub fn follow(path: &Path, request: &ControlRequest, mut on_item: impl FnMut(Value), keep_going: impl Fn() -> bool) -> Result<FollowEnd> {
    let stream = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("cannot reach the lparhv daemon at {} (is `lparhv up` running?)", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reader = BufReader::new(&stream);
    let mut first = true;
    let mut buf = Vec::new();
    loop {
        if !keep_going() {
            return Ok(FollowEnd::Stopped);
        }
        // A time-out keeps what was read of the line in `buf`.
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return Ok(FollowEnd::Closed),
            Ok(_) if !buf.ends_with(b"\n") => return Ok(FollowEnd::Closed),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e).context("reading from the daemon"),
        }
        let v: Value = serde_json::from_slice(&buf).with_context(|| format!("unreadable line {:?}", String::from_utf8_lossy(&buf)))?;
        buf.clear();
        if first {
            first = false;
            let reply: ControlReply = serde_json::from_value(v).context("unreadable reply")?;
            if !reply.ok {
                bail!("{}", reply.error.unwrap_or_else(|| "refused".into()));
            }
            continue;
        }
        if let Some(notice) = v.get("notice").and_then(Value::as_str) {
            return Ok(FollowEnd::Dropped(notice.to_string()));
        }
        on_item(v);
    }
}
