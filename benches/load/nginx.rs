//! nginx as a pass-through proxy straight to the mock (`proxy_buffering off`, keep-alive upstream
//! connections), the reference an operator knows: one process (`master_process off`, so its CPU
//! and memory are one pid's), pinned to the server's core, from a temporary config and prefix.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::tls::Certs;

pub struct Nginx {
    child: Child,
    dir: PathBuf,
    pub address: SocketAddr,
}

/// A port nobody listens on now (the kernel's pick; nginx binds it a moment later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nginx {
    /// In front of `upstream`, over TLS when `tls` is given (verifying the mock's certificate).
    pub fn start(core: usize, upstream: SocketAddr, tls: Option<&Certs>, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "llm-stream-load-nginx-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let (scheme, tls_lines) = match tls {
            None => ("http", String::new()),
            Some(certs) => (
                "https",
                format!(
                    "proxy_ssl_verify on; proxy_ssl_trusted_certificate {}; proxy_ssl_name localhost; proxy_ssl_session_reuse on;",
                    certs.authority.display()
                ),
            ),
        };
        let d = dir.display();
        let config = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 65536; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream mock {{ server {upstream}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass {scheme}://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_cache off;
      gzip off;
      proxy_read_timeout 600s;
      {tls_lines}
    }}
  }}
}}
"#
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        let child = Command::new("taskset")
            .args(["-c", &core.to_string()])
            .arg("/usr/sbin/nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (/usr/sbin/nginx, apt-get install nginx)");
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut nginx = Self {
            child,
            dir,
            address,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(address).is_err() {
            if Instant::now() > until || !matches!(nginx.child.try_wait(), Ok(None)) {
                let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                panic!("nginx did not start: {log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
