//! Connections: optional TLS, HTTP/1.1 only (like pveproxy), idle keep-alive
//! connections closed after `keepalive_timeout`, and every response ≥ 400 sent
//! with `Connection: close` so the connection ends after it. A request whose
//! answer is to be lost (`/_sim/lose-answer`) ends its connection unanswered.

use super::{handlers, Sim};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub async fn run(listener: TcpListener, sim: Arc<Sim>, tls: Option<Arc<rustls::ServerConfig>>, mut shutdown: watch::Receiver<bool>) {
    let acceptor = tls.map(TlsAcceptor::from);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                connections.spawn(serve_connection(stream, Arc::clone(&sim), acceptor.clone()));
            }
            _ = shutdown.changed() => break,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn serve_connection(stream: TcpStream, sim: Arc<Sim>, acceptor: Option<TlsAcceptor>) {
    let _ = stream.set_nodelay(true);
    let mut builder = http1::Builder::new();
    // The header read timer also runs while a keep-alive connection waits for
    // its next request: that is the idle timeout.
    builder.timer(TokioTimer::new()).header_read_timeout(sim.opts.keepalive_timeout).keep_alive(true);
    let service = service_fn(move |request| {
        let sim = Arc::clone(&sim);
        // A service error makes hyper close the connection without a response.
        async move { handlers::handle(sim, request).await }
    });
    match acceptor {
        Some(acceptor) => {
            let Ok(tls_stream) = acceptor.accept(stream).await else { return };
            let _ = builder.serve_connection(TokioIo::new(tls_stream), service).await;
        }
        None => {
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        }
    }
}
