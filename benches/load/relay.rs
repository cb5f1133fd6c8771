//! A plain byte relay, pinned to the server's core: the floor any proxy between the clients and
//! the mock pays on this machine (two more hops between cores), so that what llm-stream itself
//! adds can be told apart from what putting anything in the middle costs.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use tokio::net::{TcpListener, TcpStream};

/// Set in the relay process: the upstream it relays to.
pub const UPSTREAM: &str = "LLM_STREAM_LOAD_BENCH_RELAY_TO";

/// The relay process's body: accept, connect upstream, copy both ways; prints its address first.
pub fn serve(upstream: SocketAddr) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                inbound.set_nodelay(true).ok();
                outbound.set_nodelay(true).ok();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
}

/// The relay, running in a process of its own on `core`.
pub struct Relay {
    child: Child,
    pub address: SocketAddr,
}

impl Relay {
    pub fn start(core: usize, upstream: SocketAddr) -> Self {
        let mut child = Command::new("taskset")
            .args(["-c", &core.to_string()])
            .arg(std::env::current_exe().unwrap())
            .env(UPSTREAM, upstream.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the relay");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().parse().expect("the relay's address");
        Self { child, address }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
