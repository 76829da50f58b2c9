//! Forwarding between two TCP sockets with `splice(2)`: bytes move socket → pipe → socket
//! inside the kernel and never through a buffer of ours. Captured TCP and TLS passthrough —
//! where both ends are plain sockets — go this way; an idle tunnel then holds two pipes (whose
//! pages the kernel allocates only while bytes are in them) instead of two userspace buffers.
//! Connections that are not plain sockets (upgrades handed over by hyper) are copied.

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::unistd::pipe2;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most one `splice` call moves: a pipe's default capacity.
const CHUNK: usize = 64 * 1024;

/// One direction's pipe.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A non-blocking pipe; fails when the process is out of file descriptors, in which case
    /// the caller copies instead.
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Pipe { read, write })
    }
}

/// Moves bytes both ways until each side has finished sending (its write side is then shut
/// down on the other), or one fails. Returns the bytes moved `a → b` and `b → a`.
pub async fn bidirectional(
    a: &TcpStream,
    b: &TcpStream,
    pipes: (Pipe, Pipe),
) -> io::Result<(u64, u64)> {
    let (ab, ba) = tokio::join!(one_way(a, b, pipes.0), one_way(b, a, pipes.1));
    Ok((ab?, ba?))
}

async fn one_way(from: &TcpStream, to: &TcpStream, pipe: Pipe) -> io::Result<u64> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        // The pipe is empty here (everything read was passed on), so `EAGAIN` can only mean
        // that the socket has nothing to read yet.
        let read = from
            .async_io(Interest::READABLE, || {
                splice(from, None, &pipe.write, None, CHUNK, flags).map_err(io::Error::from)
            })
            .await?;
        if read == 0 {
            break;
        }
        let mut left = read;
        while left > 0 {
            let written = to
                .async_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, to, None, left, flags).map_err(io::Error::from)
                })
                .await?;
            left -= written;
        }
        total += read as u64;
    }
    // Passes the end of `from`'s stream on, as a copy would: the other side may still answer.
    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(total),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Two connected sockets: (the client's end, the server's end).
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_and_each_end_is_passed_on() {
        // app ─ (app_side, down) ═ splice ═ (up, server_side) ─ server
        let (mut app_side, down) = socket_pair().await;
        let (up, mut server_side) = socket_pair().await;
        let pipes = (Pipe::new().unwrap(), Pipe::new().unwrap());
        let forwarding = tokio::spawn(async move { bidirectional(&down, &up, pipes).await });

        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            app_side.write_all(&sent).await.unwrap();
            app_side.shutdown().await.unwrap();
            app_side
        });
        let mut got = Vec::new();
        server_side.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big, "every byte, in order, then the end of the stream");

        // The other direction still works after the first one ended.
        server_side.write_all(b"reply").await.unwrap();
        server_side.shutdown().await.unwrap();
        let mut app_side = writer.await.unwrap();
        let mut reply = Vec::new();
        app_side.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");

        let (to_up, to_down) = forwarding.await.unwrap().unwrap();
        assert_eq!((to_up, to_down), (1_000_000, 5));
    }
}
