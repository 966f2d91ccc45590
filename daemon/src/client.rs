//! The Rust client library of tenured's native protocol ([`crate::proto`]).
//!
//! A [`Client`] is one registered connection: leases acquired through it live as long as the
//! connection (or the pid they were acquired for). Requests are synchronous: one request, one
//! reply.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::{self, ErrorReply, FrameError, Reply, Request, PROTOCOL_VERSION};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens there.
    #[error(
        "cannot connect to tenured at {path}: {source} (is tenured running? see `tenured --help`)"
    )]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The daemon refused the request.
    #[error("{0}")]
    Daemon(ErrorReply),
}

/// A connection to tenured.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects and says hello (protocol version check).
    pub fn connect(socket: &Path, name: Option<&str>) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            path: socket.to_owned(),
            source,
        })?;
        let mut c = Client { stream };
        c.call(&Request::Hello {
            version: PROTOCOL_VERSION,
            name: name.map(str::to_owned),
        })?;
        Ok(c)
    }

    /// Sends one request and waits for its reply.
    pub fn call(&mut self, req: &Request) -> Result<serde_json::Value, ClientError> {
        proto::write_frame(&mut self.stream, req)?;
        match proto::read_reply::<Reply>(&mut self.stream)? {
            Reply::Ok(v) => Ok(v),
            Reply::Error(e) => Err(ClientError::Daemon(e)),
        }
    }

    /// Bounds how long a reply may take (None: wait as long as the daemon needs).
    pub fn set_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.stream.set_read_timeout(t)
    }

    /// The socket (e.g. to keep it open across exec, as `tenure run` does).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}
