//! A TCP proxy that delays every byte by a fixed time in each direction,
//! without limiting throughput: what the benchmark puts between every tool
//! and the S3 server to stand in for a real network round trip (a 25 ms
//! one-way delay is a 50 ms round trip, as from EC2 to S3 across zones).
//!
//! `delay_proxy LISTEN_ADDR UPSTREAM_ADDR ONE_WAY_MS`
//!
//! Each chunk read is stamped and written to the other side once its delay
//! has passed; chunks queue without bound (a delay line, not a throttle), so
//! a connection's throughput is what the two ends sustain. A connection
//! costs the delay once more to open (its SYN crosses only locally), which
//! understates a real handshake; S3 clients reuse connections, so this
//! matters at start-up only.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, delay_ms] = args.as_slice() else {
        return Err("usage: delay_proxy LISTEN_ADDR UPSTREAM_ADDR ONE_WAY_MS".into());
    };
    let upstream: SocketAddr = upstream.parse()?;
    let delay = Duration::from_millis(delay_ms.parse()?);
    let listener = TcpListener::bind(listen.as_str()).await?;
    eprintln!(
        "delay_proxy: {} -> {upstream}, {delay:?} each way",
        listener.local_addr()?
    );
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let server = match TcpStream::connect(upstream).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("delay_proxy: upstream {upstream}: {e}");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                delay_line(client_read, server_write, delay),
                delay_line(server_read, client_write, delay),
            );
        });
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; the end of
/// the stream (a half close) is passed on after the delay too.
async fn delay_line(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` tells the writer the stream ended, after what is
        // queued.
        let _ = tx.send((Instant::now() + delay, Vec::new()));
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if chunk.is_empty() {
                break;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
