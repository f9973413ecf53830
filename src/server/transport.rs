//! A connection's transport and buffers: the socket, plain or inside rustls,
//! the read buffer the protocol decodes from, and the [`OutQueue`] it writes
//! from. Every protocol (RTMP, HTTP, relays) sits on one [`ConnIo`]; none of
//! them touches the socket or TLS directly.
//!
//! Reads go into the worker's read buffer one `read` (or one TLS record
//! batch) at a time, and only the bytes read are copied to the connection's
//! own buffer (a block of exactly that size), which the protocol consumes
//! as bytes arrive: a player, which reads a few bytes of acknowledgement now
//! and then, holds those bytes, not a read's worth. Writes are vectored: the
//! queue hands as many pieces as the socket takes to one `sendmsg` (through
//! rustls for TLS, which encrypts into its own bounded buffer first).
//! When a write is due is the write policy's decision (`pacing.rs`).

use super::base::{ConnCounters, ConnId, ConnKey};
use super::proxy;
use super::queue::{Item, OutQueue, SendFile};
use super::stats::{CloseReason, Protocol, Stats};
use bytes::{Buf, Bytes, BytesMut};
use mio::net::TcpStream;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The worker's read buffer: the most one plain `read` asks of the kernel.
/// A publisher's reads fill it; a player's bring an acknowledgement or a
/// ping, and only those bytes take room in the connection's own buffer.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// The most one read takes while a PROXY header is awaited.
const MIN_READ_CHUNK: usize = 4 * 1024;
/// The least room made for a TLS connection's plaintext (a block then holds
/// [`BLOCK_READS`] times this). A player's plaintext is a few bytes now and
/// then (acknowledgements, pings): with 4 KiB here, every TLS player kept a
/// 16 KiB block it never filled, and 2,000 RTMPS players cost 35.6 KiB of
/// RSS each against 29.7 with this (perf/results/20261205-1030-vm.md). A
/// publisher's reads are records of up to 16 KiB, so its blocks stay sized
/// to them.
const MIN_TLS_READ: usize = 256;
/// A read buffer holding more unconsumed bytes than this means the decoder
/// is not making progress; the peer is closed. The chunk decoder consumes
/// partial chunk bodies as they arrive, so in practice the buffer holds less
/// than one chunk header; an HTTP head is bounded far below this.
pub(super) const MAX_READ_BUFFER: usize = 1024 * 1024;

/// A new TLS read buffer block holds this many reads of the current size
/// (see [`reserve_block`]; plain reads make blocks of exactly what was read,
/// see `read_plain`).
const BLOCK_READS: usize = 4;

/// Makes room for `need` more bytes at the end of `buf`: in its current
/// block while that has room, else in a new block of [`BLOCK_READS`] times
/// `need` that the unconsumed bytes move to. Payloads leave the read
/// buffer as slices of its block (zero-copy), so a frame kept for a while
/// keeps its whole block alive: a block sized to one read would be pinned,
/// nearly empty, by a 1-byte frame that arrived alone. With room for
/// several reads, a block is at least three quarters full of what the peer
/// sent before it is left (docs/hardening.md case 40).
fn reserve_block(buf: &mut BytesMut, need: usize) {
    if buf.capacity() - buf.len() >= need {
        return;
    }
    let mut block = BytesMut::with_capacity((buf.len() + need).max(BLOCK_READS * need));
    block.extend_from_slice(buf);
    *buf = block;
}

/// Why a connection is closed, and what its log line says.
#[derive(Debug, Clone)]
pub(super) struct Close {
    pub reason: CloseReason,
    pub why: String,
    /// Write what is queued once more, without blocking, before closing:
    /// the reply that explains the close (`_error`,
    /// NetConnection.Connect.Rejected) goes out first.
    pub last_gasp: bool,
}

impl Close {
    pub(super) fn new(reason: CloseReason, why: impl Into<String>) -> Self {
        Self {
            reason,
            why: why.into(),
            last_gasp: false,
        }
    }

    /// The same close, after one last non-blocking write of the queue.
    pub(super) fn with_last_gasp(mut self) -> Self {
        self.last_gasp = true;
        self
    }
}

/// An accepted connection's first bytes, before the protocol (or TLS) sees
/// them: the PROXY protocol header stage (see [`proxy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProxyStage {
    /// From a trusted load balancer: a header must come first, and its
    /// client address replaces the peer's.
    Expect,
    /// From anyone else: a header closes the connection; any other first
    /// bytes go to the protocol.
    Refuse,
}

/// TLS state of a connection.
struct TlsIo {
    conn: Box<rustls::Connection>,
    /// Counted in its worker's pending-handshake total (accepted
    /// connections only) until the handshake completes.
    counted: bool,
    /// `close_notify` was sent.
    notified: bool,
}

/// What one read did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Read1 {
    /// Bytes taken from the socket (TLS records included).
    pub raw: usize,
    /// The peer ended its side (a TLS close_notify; for plain sockets a
    /// zero read is reported as an error close instead).
    pub peer_closed: bool,
}

/// See the module documentation.
pub(super) struct ConnIo {
    pub id: ConnId,
    pub key: ConnKey,
    pub peer: SocketAddr,
    /// The transport as the API and gauges name it.
    pub protocol: Protocol,
    socket: TcpStream,
    tls: Option<TlsIo>,
    /// Bytes read and not yet consumed by the protocol (empty, with no
    /// allocation, while the protocol keeps up).
    pub read_buf: BytesMut,
    pub out: OutQueue,
    /// Since when the oldest media queued and not yet written waited (from
    /// when the write policy held it): the start of its write wait, for
    /// `sluice_write_wait_seconds`. The policy itself is per stream
    /// (`pacing.rs`).
    pub media_since: Option<Instant>,
    pub counters: Arc<ConnCounters>,
    /// In the worker's list of connections to write this iteration.
    dirty: bool,
    /// Since when the socket has refused bytes (`WouldBlock`) with no
    /// progress since. Cleared by a write that makes progress or by a
    /// writable edge (the kernel drained the socket). Dropping queued frames
    /// does not clear it: a player skipping frames is still stalled.
    blocked_since: Option<Instant>,
    /// Batches with a file go with `sendfile`; cleared for good when the
    /// kernel refuses the call ([`write_plain`]).
    sendfile: bool,
    /// Close once the queue is written (HTTP responses, ended streams).
    closing: Option<Close>,
    /// When this connection's timer is armed (see `WorkerCtx::arm`).
    pub armed: Option<Instant>,
    /// Until the PROXY protocol stage is over: what it expects, and the
    /// bytes read meanwhile (at most a header's maximum, [`proxy::V2_MAX_LEN`]).
    proxy: Option<(ProxyStage, BytesMut)>,
    /// TLS records read during the PROXY stage, after the header: fed to
    /// rustls before the socket is read again.
    tls_pending: Bytes,
    /// The load balancer's address when a PROXY header replaced `peer`.
    pub via: Option<SocketAddr>,
    /// `peer` changed since [`ConnIo::take_peer_change`] last looked.
    peer_changed: bool,
}

impl ConnIo {
    /// A connection on `socket`; `http` names its protocol for the API
    /// (HTTP or HTTPS, else RTMP or RTMPS); `counted`: its TLS handshake
    /// counts against the worker's cap.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        id: ConnId,
        key: ConnKey,
        socket: TcpStream,
        peer: SocketAddr,
        http: bool,
        tls: Option<Box<rustls::Connection>>,
        counted: bool,
        counters: Arc<ConnCounters>,
        proxy: Option<ProxyStage>,
    ) -> Self {
        let protocol = match (http, tls.is_some()) {
            (false, false) => Protocol::Rtmp,
            (false, true) => Protocol::Rtmps,
            (true, false) => Protocol::Http,
            (true, true) => Protocol::Https,
        };
        Self {
            id,
            key,
            peer,
            protocol,
            socket,
            tls: tls.map(|conn| TlsIo {
                conn,
                counted,
                notified: false,
            }),
            read_buf: BytesMut::new(),
            out: OutQueue::default(),
            media_since: None,
            counters,
            dirty: false,
            blocked_since: None,
            sendfile: true,
            closing: None,
            armed: None,
            proxy: proxy.map(|stage| (stage, BytesMut::new())),
            tls_pending: Bytes::new(),
            via: None,
            peer_changed: false,
        }
    }

    /// True once, after a PROXY header replaced the peer's address.
    pub(super) fn take_peer_change(&mut self) -> bool {
        std::mem::take(&mut self.peer_changed)
    }

    pub(super) fn socket(&mut self) -> &mut TcpStream {
        &mut self.socket
    }

    pub(super) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Batches with a file are sent from it (`sendfile`): a plain socket
    /// whose `sendfile` the kernel has not refused.
    pub(super) fn sends_files(&self) -> bool {
        self.tls.is_none() && self.sendfile
    }

    /// Queues bytes to send.
    pub(super) fn push(&mut self, item: Item) {
        self.out.push(item);
    }

    /// Sets the dirty flag; true when it was not set (the caller then adds
    /// the connection to the worker's write list: `WorkerCtx::schedule_write`
    /// is the one place that does).
    pub(super) fn set_dirty(&mut self) -> bool {
        !std::mem::replace(&mut self.dirty, true)
    }

    pub(super) fn clear_dirty(&mut self) {
        self.dirty = false;
    }

    /// Touches what a delivery and a write touch first
    /// ([`Conn::warm`](super::conn::Conn::warm)).
    pub(super) fn warm(&mut self) -> u64 {
        let flags = u64::from(self.dirty)
            ^ u64::from(self.closing.is_some())
            ^ u64::from(self.blocked_since.is_some())
            ^ u64::from(self.media_since.is_some())
            ^ u64::from(self.tls.is_some());
        flags ^ self.out.warm() ^ self.counters.bytes_out.load(Ordering::Relaxed)
    }

    /// In the write list and not written since (see `set_dirty`).
    pub(super) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Closes the connection once everything queued so far is written;
    /// nothing more should be queued after this.
    pub(super) fn close_after_flush(&mut self, close: Close) {
        self.closing.get_or_insert(close);
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// The socket accepted a writable edge: it has room again.
    pub(super) fn writable(&mut self) {
        self.blocked_since = None;
    }

    /// Since when the socket has taken nothing while bytes waited.
    pub(super) fn blocked_since(&self) -> Option<Instant> {
        self.blocked_since
    }

    /// Bytes still to go out: queued, or encrypted and waiting for the socket.
    pub(super) fn has_pending_output(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.conn.wants_write())
    }

    /// True while an accepted TLS connection still counts against its
    /// worker's handshake cap.
    pub(super) fn tls_handshake_counted(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.counted)
    }

    /// One read from the socket (into `scratch`, the worker's buffer, for
    /// a plain socket), the bytes appended to the read buffer (for TLS:
    /// records in, plaintext out). `Ok(None)`: nothing to read now.
    pub(super) fn read_some(
        &mut self,
        stats: &Stats,
        scratch: &mut [u8],
    ) -> Result<Option<Read1>, Close> {
        let read = if self.proxy.is_some() {
            self.read_proxy()
        } else if self.tls.is_some() {
            self.read_tls(stats)
        } else {
            self.read_plain(scratch)
        }?;
        if let Some(r) = read {
            self.counters.add_in(r.raw as u64);
            stats.bytes_in.fetch_add(r.raw as u64, Ordering::Relaxed);
        }
        Ok(read)
    }

    /// One read during the PROXY stage: the bytes wait in the stage's own
    /// buffer until a header is decoded (or, from an untrusted peer, until
    /// they cannot start one); then what follows the header goes on to the
    /// protocol (into the read buffer) or to TLS (fed to rustls next).
    fn read_proxy(&mut self) -> Result<Option<Read1>, Close> {
        let Some((stage, buf)) = self.proxy.as_mut() else {
            return Ok(None);
        };
        let stage = *stage;
        let len = buf.len();
        // Never more than a header can hold: the rest stays in the socket.
        // (A header is decided by then: this is a backstop.)
        let room = proxy::V2_MAX_LEN.saturating_sub(len).min(MIN_READ_CHUNK);
        if room == 0 {
            return Err(Close::new(
                CloseReason::Protocol,
                format!("no PROXY protocol decision within {len} bytes"),
            ));
        }
        buf.resize(len + room, 0);
        let n = loop {
            match self.socket.read(&mut buf[len..]) {
                Ok(0) => return Err(Close::new(CloseReason::Peer, "closed by peer")),
                Ok(n) => break n,
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        buf.truncate(len);
                        return Ok(None);
                    }
                    _ => {
                        return Err(Close::new(CloseReason::Peer, format!("read error: {e}")));
                    }
                },
            }
        };
        buf.truncate(len + n);
        let consumed = match stage {
            ProxyStage::Refuse => match proxy::starts_with_header(buf) {
                None => None,
                Some(false) => Some(0),
                Some(true) => {
                    return Err(Close::new(
                        CloseReason::Protocol,
                        format!(
                            "a PROXY protocol header from {}, which is not a trusted load balancer (--proxy-protocol)",
                            self.peer.ip()
                        ),
                    ))
                }
            },
            ProxyStage::Expect => match proxy::decode(buf) {
                Ok(None) => None,
                Ok(Some(h)) => {
                    if let Some(client) = h.source {
                        log::debug!(
                            "conn={} peer={client} via={}: PROXY protocol v{} header",
                            self.id,
                            self.peer,
                            h.version
                        );
                        self.via = Some(self.peer);
                        self.peer = client;
                        self.peer_changed = true;
                    } else {
                        log::debug!(
                            "conn={} peer={}: PROXY protocol v{} header without a client address (a health check)",
                            self.id,
                            self.peer,
                            h.version
                        );
                    }
                    Some(h.len)
                }
                Err(e) => {
                    return Err(Close::new(
                        CloseReason::Protocol,
                        format!("from load balancer {}: {e}", self.peer.ip()),
                    ))
                }
            },
        };
        if let Some(consumed) = consumed {
            let mut buf = self.proxy.take().map(|(_, b)| b).unwrap_or_default();
            buf.advance(consumed);
            if self.tls.is_some() {
                self.tls_pending = buf.freeze();
            } else {
                self.read_buf.extend_from_slice(&buf);
            }
        }
        Ok(Some(Read1 {
            raw: n,
            peer_closed: false,
        }))
    }

    fn read_plain(&mut self, scratch: &mut [u8]) -> Result<Option<Read1>, Close> {
        loop {
            let n = match self.socket.read(scratch) {
                Ok(0) => return Err(Close::new(CloseReason::Peer, "closed by peer")),
                Ok(n) => n,
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(Close::new(CloseReason::Peer, format!("read error: {e}"))),
                },
            };
            // The bytes read (and any left unconsumed) move to a block of
            // exactly their size: a player's few bytes of acknowledgement
            // cost a few bytes, and a payload split from the block (zero
            // copy) pins nothing the peer did not send (docs/hardening.md
            // case 40). What is left unconsumed is less than a chunk header
            // in practice; the protocol reads no more while more is left.
            let mut block = BytesMut::with_capacity(self.read_buf.len() + n);
            block.extend_from_slice(&self.read_buf);
            block.extend_from_slice(&scratch[..n]);
            self.read_buf = block;
            return Ok(Some(Read1 {
                raw: n,
                peer_closed: false,
            }));
        }
    }

    fn read_tls(&mut self, stats: &Stats) -> Result<Option<Read1>, Close> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(None);
        };
        // Records read with a PROXY header first, then the socket. Bytes
        // from `tls_pending` were counted when they were read.
        let raw = if !self.tls_pending.is_empty() {
            let mut pending: &[u8] = &self.tls_pending;
            let n = tls
                .conn
                .read_tls(&mut pending)
                .map_err(|e| Close::new(CloseReason::Protocol, format!("TLS: {e}")))?;
            self.tls_pending.advance(n);
            0
        } else {
            loop {
                match tls.conn.read_tls(&mut self.socket) {
                    Ok(0) => return Err(Close::new(CloseReason::Peer, "closed by peer")),
                    Ok(n) => break n,
                    Err(e) => match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(None),
                        io::ErrorKind::Interrupted => continue,
                        _ => return Err(Close::new(CloseReason::Peer, format!("read error: {e}"))),
                    },
                }
            }
        };
        let state = match tls.conn.process_new_packets() {
            Ok(state) => state,
            Err(e) => {
                // Send the alert rustls queued, then close.
                let _ = tls.conn.write_tls(&mut self.socket);
                if tls.counted {
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                }
                let hint = if tls.counted {
                    " (plain RTMP or HTTP on the TLS port?)"
                } else {
                    ""
                };
                return Err(Close::new(CloseReason::Protocol, format!("TLS: {e}{hint}")));
            }
        };
        let plaintext = state.plaintext_bytes_to_read();
        let peer_closed = state.peer_has_closed();
        if plaintext > 0 {
            let len = self.read_buf.len();
            reserve_block(&mut self.read_buf, plaintext.max(MIN_TLS_READ));
            self.read_buf.resize(len + plaintext, 0);
            if let Err(e) = io::Read::read_exact(&mut tls.conn.reader(), &mut self.read_buf[len..])
            {
                return Err(Close::new(CloseReason::Protocol, format!("TLS read: {e}")));
            }
        }
        Ok(Some(Read1 { raw, peer_closed }))
    }

    /// True once, when an accepted connection's TLS handshake has just
    /// completed (it stops counting against the worker's cap).
    pub(super) fn take_handshake_done(&mut self) -> bool {
        match &mut self.tls {
            Some(t) if t.counted && !t.conn.is_handshaking() => {
                t.counted = false;
                true
            }
            _ => false,
        }
    }

    /// True when rustls has records to send (a handshake reply, an alert).
    pub(super) fn tls_wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.conn.wants_write())
    }

    /// Checks the read buffer's bound after the protocol consumed what it
    /// could.
    pub(super) fn check_read_buffer(&self) -> Result<(), Close> {
        let n = self.read_buf.len();
        if n > MAX_READ_BUFFER {
            return Err(Close::new(
                CloseReason::Protocol,
                format!("{n} unconsumed bytes in the read buffer"),
            ));
        }
        Ok(())
    }

    /// Writes the queue until the socket blocks or the queue empties.
    /// Returns the bytes written (TLS records for TLS), counted on the
    /// connection (the caller counts them for the server and the stream,
    /// once per write pass), and the write calls made; updates the
    /// stalled-since clock.
    pub(super) fn flush(&mut self, now: Instant) -> Result<Flushed, Close> {
        let mut socket = SendMsg::new(&self.socket);
        let result = match self.tls.as_mut() {
            None => write_plain(&mut self.out, &mut socket, &mut self.sendfile),
            Some(tls) => write_tls(&mut self.out, &mut tls.conn, &mut socket),
        };
        let (written, blocked) =
            result.map_err(|e| Close::new(CloseReason::Peer, format!("write error: {e}")))?;
        if written > 0 {
            self.blocked_since = None;
            self.counters.add_out(written);
        }
        if blocked {
            self.blocked_since.get_or_insert(now);
        }
        Ok(Flushed {
            written,
            calls: socket.calls,
            file_calls: socket.file_calls,
        })
    }

    /// The close asked for with [`ConnIo::close_after_flush`], once
    /// everything is written.
    pub(super) fn take_finished_close(&mut self) -> Option<Close> {
        if self.has_pending_output() {
            return None;
        }
        self.closing.take()
    }

    /// One last non-blocking write of what is queued: the reply that
    /// explains the close (`_error`) goes out on every transport. For TLS
    /// the queue is encrypted, then the TLS close follows it.
    pub(super) fn last_gasp(&mut self) {
        match self.tls.as_mut() {
            None => {
                let _ = self.out.write_to(&mut SendMsg::new(&self.socket));
            }
            Some(tls) => {
                while !self.out.is_empty() {
                    match self.out.write_to(&mut tls.conn.writer()) {
                        Ok(n) if n > 0 => {}
                        _ => break,
                    }
                }
                tls.close(&mut self.socket);
            }
        }
    }
}

impl TlsIo {
    /// Sends TLS `close_notify` (once), with what rustls still holds, in
    /// non-blocking writes: the peer then knows the stream ended here and
    /// was not cut (a close-delimited HTTPS-FLV response would otherwise
    /// look truncated).
    fn close(&mut self, socket: &mut TcpStream) {
        if !self.notified {
            self.notified = true;
            self.conn.send_close_notify();
        }
        while self.conn.wants_write() {
            match self.conn.write_tls(socket) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
}

impl Drop for ConnIo {
    /// Every TLS connection ends with `close_notify`, whatever closed it.
    fn drop(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            if !tls.conn.is_handshaking() {
                tls.close(&mut self.socket);
            }
        }
    }
}

/// What one [`ConnIo::flush`] did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Flushed {
    /// Bytes the socket took (TLS records for TLS).
    pub written: u64,
    /// Write system calls made, those that found the socket full included.
    pub calls: u64,
    /// Of them, `sendfile` calls (batches sent from a batch file).
    pub file_calls: u64,
}

/// A socket written with `sendmsg(2)` (socket2's `send_vectored`): the same
/// gather write as `writev`, without the file layer in between (`writev`
/// goes through `vfs_writev`, `fdget_pos` and `sock_write_iter`, about a
/// tenth of the write path's profile). Counts its calls. SIGPIPE: Rust's
/// runtime ignores it, so a closed peer is an `EPIPE` error, as with
/// `writev`.
struct SendMsg<'a> {
    socket: &'a TcpStream,
    calls: u64,
    file_calls: u64,
}

impl<'a> SendMsg<'a> {
    fn new(socket: &'a TcpStream) -> Self {
        Self {
            socket,
            calls: 0,
            file_calls: 0,
        }
    }
}

impl Write for SendMsg<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.calls += 1;
        socket2::SockRef::from(self.socket).send(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.calls += 1;
        socket2::SockRef::from(self.socket).send_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SendFile for SendMsg<'_> {
    /// `sendfile(2)`: the socket takes references to the file's pages
    /// (batch_file.rs). Counted as a write call. It has no MSG_NOSIGNAL:
    /// a closed peer is an `EPIPE` error because Rust's runtime ignores
    /// SIGPIPE, as for `writev` above.
    ///
    /// A kernel or sandbox that refuses the call itself (a seccomp filter's
    /// `EPERM` or `ENOSYS`; `EINVAL` or `EOPNOTSUPP` for a socket type that
    /// cannot splice) is told apart from a failing socket as
    /// [`io::ErrorKind::Unsupported`]: [`write_plain`] then writes the
    /// connection from memory instead of closing it.
    fn send_file(&mut self, file: &std::fs::File, offset: u64, len: usize) -> io::Result<usize> {
        use rustix::io::Errno;
        self.calls += 1;
        self.file_calls += 1;
        let mut offset = offset;
        match rustix::fs::sendfile(self.socket, file, Some(&mut offset), len) {
            Ok(n) => Ok(n),
            Err(e @ (Errno::PERM | Errno::NOSYS | Errno::INVAL | Errno::OPNOTSUPP)) => Err(
                io::Error::new(io::ErrorKind::Unsupported, format!("sendfile refused: {e}")),
            ),
            Err(e) => Err(e.into()),
        }
    }
}

/// Set once the first connection found `sendfile` refused: the warning is
/// logged once per process, not once per connection.
static SENDFILE_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes queued bytes to a plain socket until it blocks or the queue
/// empties: (bytes written, blocked). Batches with a file go with
/// `sendfile` while `files` holds, the rest with `sendmsg`. A `sendfile`
/// the kernel refuses ([`io::ErrorKind::Unsupported`], which only
/// [`SendFile::send_file`] returns) clears `files` for good: this
/// connection's batches then go from memory (every batch keeps its bytes),
/// and nothing was written by the refused call, so the queue's position
/// is unchanged.
fn write_plain<S: SendFile>(
    out: &mut OutQueue,
    socket: &mut S,
    files: &mut bool,
) -> io::Result<(u64, bool)> {
    let mut written = 0u64;
    while !out.is_empty() {
        let result = if *files {
            out.write_to_sink(socket)
        } else {
            out.write_to(socket)
        };
        match result {
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((written, true)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if *files && e.kind() == io::ErrorKind::Unsupported => {
                *files = false;
                if !SENDFILE_REFUSED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    log::warn!(
                        "{e}: connections that meet this write from memory instead \
                         (`--sendfile false` stops writing batch files at all)"
                    );
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok((written, false))
}

/// Moves queued plaintext into rustls (which encrypts it, up to its buffer
/// limit) and writes TLS records to the socket, until the socket blocks or
/// nothing is left: (TLS bytes written, blocked).
fn write_tls(
    out: &mut OutQueue,
    tls: &mut rustls::Connection,
    socket: &mut SendMsg<'_>,
) -> io::Result<(u64, bool)> {
    let mut written = 0u64;
    loop {
        let moved = if out.is_empty() {
            0
        } else {
            out.write_to(&mut tls.writer())?
        };
        // rustls may have been full when this round started (nothing moved):
        // keep going while the socket takes its records, or the rest of the
        // queue would wait for another event (no new writable edge comes
        // while the socket never blocked).
        let mut flushed = false;
        while tls.wants_write() {
            match tls.write_tls(socket) {
                Ok(n) => {
                    written += n as u64;
                    flushed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((written, true)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() || (moved == 0 && !flushed) {
            return Ok((written, false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::batch_file::BatchFiles;
    use crate::server::queue::tests::{file_batch, Trickle};
    use std::sync::atomic::AtomicU64;

    /// A socket whose `sendfile` the kernel refuses (as a seccomp filter
    /// would), taking at most `cap` bytes per vectored write.
    struct Refusing {
        inner: Trickle,
        refused: usize,
    }

    impl Write for Refusing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.inner.write(buf)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.inner.write_vectored(bufs)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl SendFile for Refusing {
        fn send_file(&mut self, _: &std::fs::File, _: u64, _: usize) -> io::Result<usize> {
            self.refused += 1;
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "sendfile refused",
            ))
        }
    }

    /// A refused `sendfile` costs the connection its file path, not its
    /// bytes: everything is written from memory, in order, and the refusal
    /// is met once. Any other error still ends the write.
    #[test]
    fn a_refused_sendfile_falls_back_to_memory_for_that_connection() {
        let mut files = BatchFiles::new(Arc::new(AtomicU64::new(0)));
        let mut out = OutQueue::default();
        out.push(Item::Control(Bytes::from_static(b"<")));
        out.push(file_batch(&mut files, &[&[b"ab", b"cde"], &[b"fgh"]]));
        out.push(file_batch(&mut files, &[&[b"ij"], &[b"klm", b"n"]]));
        let mut sink = Refusing {
            inner: Trickle {
                cap: 3,
                got: Vec::new(),
            },
            refused: 0,
        };
        let mut use_files = true;
        let (written, blocked) = write_plain(&mut out, &mut sink, &mut use_files).unwrap();
        assert_eq!(sink.inner.got, b"<abcdefghijklmn");
        assert_eq!((written, blocked), (15, false));
        assert_eq!(sink.refused, 1, "tried once, then never again");
        assert!(!use_files);
        out.push(file_batch(&mut files, &[&[b"op"]]));
        write_plain(&mut out, &mut sink, &mut use_files).unwrap();
        assert_eq!(sink.inner.got, b"<abcdefghijklmnop");
        assert_eq!(sink.refused, 1);

        // A broken socket's error still ends the write, and leaves the
        // files on: only a refused sendfile turns them off.
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl SendFile for Broken {
            fn send_file(&mut self, _: &std::fs::File, _: u64, _: usize) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
        }
        out.push(file_batch(&mut files, &[&[b"qr"]]));
        let mut use_files = true;
        let e = write_plain(&mut out, &mut Broken, &mut use_files).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(use_files, "a broken socket is not a refused sendfile");
    }
}
