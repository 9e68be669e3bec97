//! Issue 25, item 3: the reverse-proxy recipe of docs/operations.md, run
//! with Debian's nginx. nginx ends TLS and upgrades `/ws`; the hub, told
//! that nginx is a trusted proxy, counts each client by the address nginx
//! saw, whatever `X-Forwarded-For` the client itself sent; `/healthz`
//! answers through it. Without nginx installed this test fails and says
//! what to install (CI installs it).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use united_hub::client::trust_ca_pem;
use united_hub::proto::Payload;

use united_hub::localcluster::free_port;

use crate::helpers::*;

fn nginx_binary() -> PathBuf {
    for path in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(path).exists() {
            return PathBuf::from(path);
        }
    }
    panic!("nginx is not installed: apt-get install nginx (the reverse-proxy test runs it)");
}

/// nginx as docs/operations.md configures it, on a TLS port and a plain
/// one, in front of `upstream`; stopped when dropped.
struct Nginx {
    child: Child,
    tls_port: u16,
    plain_port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(dir: &Path, upstream: &str, cert: &Path, key: &Path) -> Nginx {
    let (tls_port, plain_port) = (free_port(), free_port());
    let root = unsafe { libc::geteuid() } == 0;
    let location = format!(
        "location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 60s;
        }}"
    );
    let conf = format!(
        "{user}
        worker_processes 1;
        pid {dir}/nginx.pid;
        error_log {dir}/error.log warn;
        events {{ worker_connections 256; }}
        http {{
            access_log off;
            client_body_temp_path {dir}/body;
            proxy_temp_path {dir}/proxy;
            fastcgi_temp_path {dir}/fastcgi;
            uwsgi_temp_path {dir}/uwsgi;
            scgi_temp_path {dir}/scgi;
            map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
            server {{
                listen 127.0.0.1:{tls_port} ssl;
                ssl_certificate {cert};
                ssl_certificate_key {key};
                {location}
            }}
            server {{
                listen 127.0.0.1:{plain_port};
                {location}
            }}
        }}",
        user = if root { "user root;" } else { "" },
        dir = dir.display(),
        cert = cert.display(),
        key = key.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(nginx_binary())
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx starts");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", plain_port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nginx did not listen: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx {
        child,
        tls_port,
        plain_port,
    }
}

/// `POST /api/auth/challenge` through nginx's plain port from the local
/// address `from`, with a forged `X-Forwarded-For`; the status.
fn challenge_from(from: &str, port: u16, forged: &str) -> u16 {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    let remote: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&remote.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    write!(
        stream,
        "POST /api/auth/challenge HTTP/1.1\r\nHost: hub\r\nX-Forwarded-For: {forged}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[actix_web::test]
async fn the_nginx_recipe_ends_tls_upgrades_websockets_and_forwards_the_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    trust_ca_pem(ca.as_bytes()).unwrap();
    let app = spawn_app_with(|s| {
        s.auth_rate = 1;
        s.auth_burst = 5;
        s.trusted_proxy = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let nginx = start_nginx(dir.path(), &app.address, &cert, &key);
    let proxy = format!("https://127.0.0.1:{}", nginx.tls_port);

    // The health check, through the proxy.
    let http = awc::Client::builder()
        .connector(united_hub::client::connector())
        .finish();
    let mut health = http.get(format!("{proxy}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(health.body().await.unwrap(), r#"{"status":"ok"}"#);

    // Each client is counted by the address nginx saw: 127.0.0.2 rotates
    // its own X-Forwarded-For and still runs out; 127.0.0.3 does not.
    let statuses: Vec<u16> = (0..7)
        .map(|i| challenge_from("127.0.0.2", nginx.plain_port, &format!("203.0.113.{i}")))
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    assert_eq!(
        challenge_from("127.0.0.3", nginx.plain_port, "127.0.0.2"),
        200
    );

    // Login, a send over HTTPS and a push over wss://, all through nginx
    // (two logins: four auth requests from 127.0.0.1, within its burst).
    let alice = user_at(&proxy, "Alice").await;
    let bob = user_at(&proxy, "Bob").await;
    assert!(bob.client.ws_url().starts_with("wss://"));
    let mut bob_ws = bob.live_ws().await;
    let conversation = alice.open_conversation(&bob).await;
    alice.send_http(&bob, &conversation, "through nginx").await;
    let pushed = loop {
        if let Some(Payload::DmMessageEvent(e)) = next_envelope(&mut bob_ws).await.payload {
            break e.message.unwrap();
        }
    };
    assert_eq!(bob.open_proto(&pushed), "through nginx");
    drop(nginx);
}
