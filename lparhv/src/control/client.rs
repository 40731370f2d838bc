//! The blocking client of the control socket (the CLI's side). Its
//! failures that a script must tell apart (no daemon, no answer in time, a
//! refusal with its PAPR code) are a [`ControlError`]; the CLI maps them to
//! exit codes (docs/lparhv.md, "Exit codes").

use super::protocol::{ControlReply, ControlRequest};
use anyhow::{Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the client waits for an answer by default: rem_pci may wait
/// for an eject (up to 10 min by config) and a fence.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(660);

/// Overrides [`REPLY_TIMEOUT`] (whole seconds).
pub const REPLY_TIMEOUT_ENV: &str = "LPARHV_REPLY_TIMEOUT";

/// A control request that did not succeed, in the kinds a caller acts on.
#[derive(Debug)]
pub enum ControlError {
    /// Nothing listens on the socket: it is absent, or the connection was refused.
    NotRunning { socket: PathBuf, source: std::io::Error },
    /// The daemon took the request but did not answer in time.
    TimedOut { socket: PathBuf, after: Duration },
    /// The daemon answered with a refusal; `code` is the PAPR return code, when there is one.
    Refused { message: String, code: Option<i64> },
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::NotRunning { socket, source } => {
                write!(f, "no lparhv daemon at {} ({source}); is `lparhv up` running?", socket.display())
            }
            ControlError::TimedOut { socket, after } => {
                write!(f, "the daemon at {} did not answer within {} s", socket.display(), after.as_secs())
            }
            ControlError::Refused { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for ControlError {}

impl ControlReply {
    /// The result of a successful reply, or the refusal as an error.
    pub fn into_result(self) -> Result<Value, ControlError> {
        if self.ok {
            Ok(self.result.unwrap_or(Value::Null))
        } else {
            Err(ControlError::Refused { message: self.error.unwrap_or_else(|| "refused".into()), code: self.code })
        }
    }
}

/// The reply time limit: [`REPLY_TIMEOUT_ENV`] when set to whole seconds, else [`REPLY_TIMEOUT`].
fn reply_timeout() -> Result<Duration> {
    match std::env::var(REPLY_TIMEOUT_ENV) {
        Ok(text) => {
            let secs: u64 =
                text.trim().parse().with_context(|| format!("{REPLY_TIMEOUT_ENV}={text:?} is not a whole number of seconds"))?;
            Ok(Duration::from_secs(secs.max(1)))
        }
        Err(_) => Ok(REPLY_TIMEOUT),
    }
}

/// A blocking client (the CLI's): sends one request, returns the reply.
pub fn request(path: &Path, request: &ControlRequest) -> Result<ControlReply> {
    let timeout = reply_timeout()?;
    let stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Err(ControlError::NotRunning { socket: path.to_path_buf(), source: e }.into())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot reach the lparhv daemon at {}", path.display())),
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    match reader.read_line(&mut answer) {
        Ok(0) => anyhow::bail!("the daemon closed the control connection without answering"),
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            return Err(ControlError::TimedOut { socket: path.to_path_buf(), after: timeout }.into())
        }
        Err(e) => return Err(e).context("reading the daemon's answer"),
    }
    serde_json::from_str(&answer).with_context(|| format!("unreadable reply {answer:?}"))
}

/// Like [`request`] but turns a refusal into a [`ControlError::Refused`].
pub fn call(path: &Path, req: &ControlRequest) -> Result<Value> {
    Ok(request(path, req)?.into_result()?)
}
