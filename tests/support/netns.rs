//! A network namespace a test makes for itself, joined to the test's own namespace by a
//! veth pair, with an address on it that silently drops what is sent to it (a blackhole:
//! no RST, no ICMP, the way a dead host behind a firewall looks), and the namespace's own
//! `/etc/hosts` and `/etc/resolv.conf` (which `ip netns exec` mounts over the real ones).
//! Also the DNS servers a test needs there: one that answers from a table with a TTL of one
//! second, and one that never answers.
//!
//! It needs root and iproute2's `ip`; without them it panics saying so (a test that needs
//! a namespace never skips). Everything is removed when the `Netns` is dropped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::AbortOnDrop;

/// iproute2's `ip`, where Debian puts it.
pub const IP: &str = "/usr/sbin/ip";

/// Agent flags that find a dead connection within a few seconds (the liveness interval
/// plus the RPC timeout) and count fall 3 in two more, in the defaults' proportions: what
/// the cut tests and the cut benchmark run the agent with.
pub const CUT_FLAGS: &[&str] = &[
    "--check-interval",
    "1s",
    "--liveness-interval",
    "2s",
    "--grpc-connect-timeout",
    "500ms",
    "--grpc-rpc-timeout",
    "500ms",
];

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One namespace and its link. On the link's /24 (in 198.18.0.0/15, kept for benchmarks)
/// and /64 (a ULA): `.1` is the test's side, `.2` the namespace's, `.3` the blackhole.
pub struct Netns {
    pub name: String,
    /// The veth end in the test's namespace.
    link: String,
    /// The veth end in the namespace.
    inner: String,
    v4: [u8; 3],
    v6: [u16; 4],
}

impl Netns {
    /// Makes the namespace and its link, and checks that the blackhole really drops (a
    /// connect to it neither succeeds nor fails within a second).
    pub fn new() -> Netns {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("Uid:"))
                    .and_then(|ids| ids.split_whitespace().next().map(str::to_string))
            });
        assert_eq!(
            uid.as_deref(),
            Some("0"),
            "the names tests make network namespaces: run them as root (CI: .ci/test does)"
        );
        assert!(
            std::path::Path::new(IP).exists(),
            "the names tests need iproute2's {IP}: apt-get install -y iproute2 (.ci/test does)"
        );
        let pid = std::process::id();
        let counter = NEXT.fetch_add(1, Ordering::Relaxed);
        let index = (pid.wrapping_mul(8).wrapping_add(counter)) % 512;
        let netns = Netns {
            name: format!("hga-{pid}-{counter}"),
            link: format!("hga{}h{counter}", pid % 100_000),
            inner: format!("hga{}n{counter}", pid % 100_000),
            v4: [198, 18 + (index / 256) as u8, (index % 256) as u8],
            v6: [0xfd00, 0x5ee, (pid & 0xffff) as u16, counter as u16],
        };
        let inner = netns.inner.clone();
        netns.ip(&["netns", "add", &netns.name]);
        netns.ip(&[
            "link",
            "add",
            &netns.link,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
        ]);
        netns.ip(&["link", "set", &inner, "netns", &netns.name]);
        netns.ip(&[
            "addr",
            "add",
            &format!("{}/24", netns.v4(1)),
            "dev",
            &netns.link,
        ]);
        netns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", netns.v6(1)),
            "dev",
            &netns.link,
            "nodad",
        ]);
        netns.ip(&["link", "set", &netns.link, "up"]);
        netns.ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
        netns.ip(&[
            "-n",
            &netns.name,
            "addr",
            "add",
            &format!("{}/24", netns.v4(2)),
            "dev",
            &inner,
        ]);
        netns.ip(&[
            "-n",
            &netns.name,
            "-6",
            "addr",
            "add",
            &format!("{}/64", netns.v6(2)),
            "dev",
            &inner,
            "nodad",
        ]);
        netns.ip(&["-n", &netns.name, "link", "set", &inner, "up"]);
        // The blackhole: a neighbour entry to a MAC nobody has. Frames to it leave the
        // namespace, and the test's side drops them (not its MAC): no answer of any kind.
        for silent in [netns.silent_v4(), netns.silent_v6()] {
            netns.ip(&[
                "-n",
                &netns.name,
                "neigh",
                "add",
                &silent.to_string(),
                "lladdr",
                "02:00:00:00:00:03",
                "dev",
                &inner,
                "nud",
                "permanent",
            ]);
        }
        std::fs::create_dir_all(netns.etc()).expect("create /etc/netns/NAME");
        for silent in [netns.silent_v4(), netns.silent_v6()] {
            netns.assert_silent(silent);
        }
        netns
    }

    /// `.n` on the link's /24.
    pub fn v4(&self, n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(self.v4[0], self.v4[1], self.v4[2], n))
    }

    /// `::n` on the link's /64.
    pub fn v6(&self, n: u16) -> IpAddr {
        let [a, b, c, d] = self.v6;
        IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, n))
    }

    /// The test's side of the link (where its backends and DNS servers listen).
    pub fn outside_v4(&self) -> IpAddr {
        self.v4(1)
    }

    pub fn outside_v6(&self) -> IpAddr {
        self.v6(1)
    }

    /// The namespace's side (where an agent run inside listens).
    pub fn inside_v4(&self) -> IpAddr {
        self.v4(2)
    }

    /// Addresses that swallow every packet sent to them from inside the namespace.
    pub fn silent_v4(&self) -> IpAddr {
        self.v4(3)
    }

    pub fn silent_v6(&self) -> IpAddr {
        self.v6(3)
    }

    /// One more address on the test's side of the link (`.n`, `::n`).
    pub fn add_outside(&self, address: IpAddr) {
        let (family, prefix) = if address.is_ipv6() {
            ("-6", 64)
        } else {
            ("-4", 24)
        };
        let mut args = vec![family, "addr", "add"];
        let cidr = format!("{address}/{prefix}");
        args.extend([cidr.as_str(), "dev", &self.link]);
        if address.is_ipv6() {
            args.push("nodad");
        }
        self.ip(&args);
    }

    /// Cuts the namespace off from `address` on the test's side: every packet the
    /// namespace sends there goes to a MAC nobody has, so it is dropped, with no RST and
    /// no ICMP (a dead link, as far as the namespace can tell). Connections open to it
    /// go silent; new ones time out.
    pub fn cut(&self, address: IpAddr) {
        self.ip(&[
            "-n",
            &self.name,
            "neigh",
            "replace",
            &address.to_string(),
            "lladdr",
            "02:00:00:00:00:03",
            "dev",
            &self.inner,
            "nud",
            "permanent",
        ]);
    }

    /// Undoes [`Netns::cut`]: the namespace finds `address` by ARP (or ND) again.
    pub fn heal(&self, address: IpAddr) {
        self.ip(&[
            "-n",
            &self.name,
            "neigh",
            "del",
            &address.to_string(),
            "dev",
            &self.inner,
        ]);
    }

    /// The command line of an agent run inside the namespace (with [`Netns::exec`]),
    /// listening (agent port and admin) on the namespace's side of the link, with `flags`.
    pub fn agent_args(&self, flags: &[&str]) -> Vec<String> {
        let inside = self.inside_v4().to_string();
        let listen = [
            "--server-bind",
            &inside,
            "--server-port",
            "0",
            "--metrics-bind",
            &inside,
            "--metrics-port",
            "0",
        ];
        listen
            .iter()
            .chain(flags)
            .map(|word| word.to_string())
            .collect()
    }

    /// Writes `/etc/netns/NAME/FILE` (`hosts`, `resolv.conf`), in place: a process already
    /// running in the namespace has the file mounted, and sees the new content.
    pub fn write_etc(&self, file: &str, body: &str) {
        let path = self.etc().join(file);
        std::fs::write(&path, body)
            .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
    }

    /// The words that run a program inside the namespace.
    pub fn exec(&self) -> [&str; 4] {
        [IP, "netns", "exec", &self.name]
    }

    fn etc(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) {
        let output = Command::new(IP)
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("run {IP}: {error}"));
        assert!(
            output.status.success(),
            "{IP} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A connect from inside the namespace to `address` still hangs after a second (bash's
    /// /dev/tcp under timeout(1): 124 is "timed out").
    fn assert_silent(&self, address: IpAddr) {
        let target = match address {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => v6.to_string(),
        };
        let status = Command::new(IP)
            .args(["netns", "exec", &self.name, "timeout", "1", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{target}/9"))
            .status()
            .expect("run bash in the namespace");
        assert_eq!(
            status.code(),
            Some(124),
            "a connect to the blackhole {address} must hang, not end ({status})"
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; then the namespace and its files.
        let _ = Command::new(IP).args(["link", "del", &self.link]).output();
        let _ = Command::new(IP).args(["netns", "del", &self.name]).output();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// A DNS server on UDP port 53 answering A and AAAA questions from a table, every record
/// with a TTL of one second; a name not in the table has no records (NOERROR, empty).
pub struct TableDns {
    table: Arc<Mutex<HashMap<String, Vec<IpAddr>>>>,
    questions: Arc<AtomicUsize>,
    _serving: AbortOnDrop,
}

impl TableDns {
    pub async fn start(on: IpAddr) -> TableDns {
        let socket = tokio::net::UdpSocket::bind(SocketAddr::new(on, 53))
            .await
            .expect("bind the test's DNS server on port 53");
        let table: Arc<Mutex<HashMap<String, Vec<IpAddr>>>> = Arc::default();
        let questions = Arc::new(AtomicUsize::new(0));
        let (seen, asked) = (Arc::clone(&table), Arc::clone(&questions));
        let serving = tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
                asked.fetch_add(1, Ordering::Relaxed);
                let table = seen.lock().unwrap().clone();
                if let Some(reply) = dns_answer(&buffer[..len], &table) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        TableDns {
            table,
            questions,
            _serving: AbortOnDrop(serving),
        }
    }

    /// What `name` resolves to from now on.
    pub fn set(&self, name: &str, addrs: &[IpAddr]) {
        self.table.lock().unwrap().insert(
            name.trim_end_matches('.').to_ascii_lowercase(),
            addrs.to_vec(),
        );
    }

    pub fn questions(&self) -> usize {
        self.questions.load(Ordering::Relaxed)
    }
}

/// The answer to one query (A or AAAA, from `table`), or `None` for a packet that is not
/// one.
fn dns_answer(query: &[u8], table: &HashMap<String, Vec<IpAddr>>) -> Option<Vec<u8>> {
    // Header (12 bytes), then the question: labels, type, class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let question = query.get(12..question_end)?;
    let name = labels.join(".");
    let records: Vec<IpAddr> = table
        .get(&name)
        .into_iter()
        .flatten()
        .copied()
        .filter(|addr| match qtype {
            1 => addr.is_ipv4(),
            28 => addr.is_ipv6(),
            _ => false,
        })
        .collect();
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[..2]); // id
    reply.extend_from_slice(&[0x81, 0x80]); // a response, recursion desired and available
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&(records.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
    reply.extend_from_slice(question);
    for addr in records {
        reply.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        reply.extend_from_slice(&qtype.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes()); // IN
        reply.extend_from_slice(&1u32.to_be_bytes()); // TTL: one second
        match addr {
            IpAddr::V4(v4) => {
                reply.extend_from_slice(&4u16.to_be_bytes());
                reply.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                reply.extend_from_slice(&16u16.to_be_bytes());
                reply.extend_from_slice(&v6.octets());
            }
        }
    }
    Some(reply)
}

/// A nameserver that never answers: UDP port 53 read (each question counted) and never
/// answered, TCP port 53 listening and never accepting (the kernel completes the
/// handshake; nothing is said).
pub struct SilentDns {
    questions: Arc<AtomicUsize>,
    _reading: AbortOnDrop,
    _tcp: std::net::TcpListener,
}

impl SilentDns {
    pub async fn start(on: IpAddr) -> SilentDns {
        let at = SocketAddr::new(on, 53);
        let udp = tokio::net::UdpSocket::bind(at)
            .await
            .expect("bind UDP port 53");
        let questions = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&questions);
        let reading = tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            while udp.recv_from(&mut buffer).await.is_ok() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        });
        SilentDns {
            questions,
            _reading: AbortOnDrop(reading),
            _tcp: std::net::TcpListener::bind(at).expect("bind TCP port 53"),
        }
    }

    /// The questions asked so far.
    pub fn questions(&self) -> usize {
        self.questions.load(Ordering::Relaxed)
    }
}
