//! Names to addresses without the blocking pool: one hickory resolver for the whole probe,
//! built once from the system configuration (`/etc/resolv.conf`), and `/etc/hosts` read
//! here so that a name found there never goes to DNS (as glibc's `files dns` does). Every
//! lookup ends by the caller's deadline, and each answer says how long it stays true (its
//! records' TTL), so an endpoint knows when to ask again.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, TokioResolver};
use tokio::time::Instant;

/// The shortest life an answer gets: a TTL of 0 would make every call resolve again.
pub const MIN_ANSWER_LIFE: Duration = Duration::from_secs(1);
/// How long an answer from the hosts file holds, and how often the file is looked at for a
/// change (one `stat` at most this often, for the whole probe).
pub const HOSTS_LIFE: Duration = Duration::from_secs(5);
/// Where the system's configuration is.
const RESOLV_CONF: &str = "/etc/resolv.conf";
const HOSTS_FILE: &str = "/etc/hosts";

/// What a name resolved to, and until when that holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// In the order the resolver gave them (AAAA records before A).
    pub addrs: Vec<IpAddr>,
    pub valid_until: Instant,
}

/// Why a name gave no address; the reason HAProxy shows after `dns: `.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("timeout")]
    Timeout,
    #[error("no such name {0}")]
    NoSuchName(String),
    #[error("no addresses for {0}")]
    NoAddresses(String),
    #[error("invalid name {0}")]
    InvalidName(String),
    #[error("{0}")]
    Failed(String),
}

/// The probe's one resolver, shared by every endpoint.
pub struct Resolver {
    dns: TokioResolver,
    hosts: HostsFile,
}

impl Resolver {
    /// Built from `/etc/resolv.conf` and `/etc/hosts`. A query to a nameserver is given up
    /// after half of `budget` (the connect timeout), so two attempts fit in it and a
    /// nameserver that never answers holds nothing longer; a lookup's own deadline is the
    /// caller's. Without a readable resolv.conf the resolver asks 127.0.0.1, as glibc does,
    /// and says so once.
    pub fn system(budget: Duration) -> Resolver {
        let (config, options) = match std::fs::read(RESOLV_CONF)
            .map_err(NetError::from)
            .and_then(hickory_resolver::system_conf::parse_resolv_conf)
        {
            Ok(system) => system,
            Err(error) => {
                tracing::warn!(
                    file = RESOLV_CONF,
                    %error,
                    "cannot use the system's resolver configuration; asking a nameserver on 127.0.0.1"
                );
                let local = NameServerConfig::udp_and_tcp(IpAddr::from([127, 0, 0, 1]));
                (
                    ResolverConfig::from_parts(None, Vec::new(), vec![local]),
                    ResolverOpts::default(),
                )
            }
        };
        Resolver::with(config, options, budget, Path::new(HOSTS_FILE))
    }

    fn with(
        config: ResolverConfig,
        mut options: ResolverOpts,
        budget: Duration,
        hosts: &Path,
    ) -> Resolver {
        let per_query = (budget / 2).max(Duration::from_millis(50));
        // resolv.conf's timeout (5 s by default) is far longer than a probe may wait.
        options.timeout = options.timeout.min(per_query);
        options.attempts = options.attempts.clamp(1, 2);
        // Both families, asked at once; Happy Eyeballs decides which connects.
        options.ip_strategy = LookupIpStrategy::Ipv6AndIpv4;
        // The hosts file is read here, so that a name in it never reaches DNS.
        options.use_hosts_file = ResolveHosts::Never;
        let dns = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .expect("a resolver from a parsed configuration builds");
        Resolver {
            dns,
            hosts: HostsFile::new(hosts.to_path_buf()),
        }
    }

    /// The addresses of `name`, from the hosts file if it names them, else from DNS (its
    /// cache first), by `by`.
    pub async fn lookup(&self, name: &str, by: Instant) -> Result<Answer, ResolveError> {
        let parsed =
            Name::from_utf8(name).map_err(|_| ResolveError::InvalidName(name.to_string()))?;
        if let Some(addrs) = self.hosts.lookup(&parsed) {
            return Ok(Answer {
                addrs,
                valid_until: Instant::now() + HOSTS_LIFE,
            });
        }
        let found = tokio::time::timeout_at(by, self.dns.lookup_ip(parsed))
            .await
            .map_err(|_| ResolveError::Timeout)?
            .map_err(|error| reason(name, &error))?;
        let addrs: Vec<IpAddr> = found.iter().collect();
        if addrs.is_empty() {
            return Err(ResolveError::NoAddresses(name.to_string()));
        }
        let valid_until = Instant::from_std(found.valid_until());
        Ok(Answer {
            addrs,
            valid_until: valid_until.max(Instant::now() + MIN_ANSWER_LIFE),
        })
    }
}

/// hickory's errors, in the few words an operator needs.
fn reason(name: &str, error: &NetError) -> ResolveError {
    if error.is_nx_domain() {
        return ResolveError::NoSuchName(name.to_string());
    }
    if error.is_no_records_found() {
        return ResolveError::NoAddresses(name.to_string());
    }
    match error {
        NetError::Timeout => ResolveError::Timeout,
        other => ResolveError::Failed(other.to_string().to_ascii_lowercase()),
    }
}

/// The hosts file, read again when its modification time changes (looked at no more than
/// once per [`HOSTS_LIFE`]).
struct HostsFile {
    path: PathBuf,
    state: Mutex<HostsState>,
}

struct HostsState {
    hosts: Hosts,
    modified: Option<SystemTime>,
    checked: Option<Instant>,
}

impl HostsFile {
    fn new(path: PathBuf) -> HostsFile {
        HostsFile {
            path,
            state: Mutex::new(HostsState {
                hosts: Hosts::default(),
                modified: None,
                checked: None,
            }),
        }
    }

    /// The addresses the file gives `name` (both families), or `None` if it does not name
    /// it. A small file and a `stat` on the runtime's thread, as glibc does on every lookup.
    fn lookup(&self, name: &Name) -> Option<Vec<IpAddr>> {
        let mut state = self.state.lock().expect("hosts lock poisoned");
        let now = Instant::now();
        if state.checked.is_none_or(|at| now >= at + HOSTS_LIFE) {
            state.checked = Some(now);
            let modified = std::fs::metadata(&self.path)
                .and_then(|meta| meta.modified())
                .ok();
            if modified != state.modified || modified.is_none() {
                state.modified = modified;
                state.hosts = read_hosts(&self.path);
            }
        }
        let mut addrs = Vec::new();
        for record_type in [RecordType::AAAA, RecordType::A] {
            let query = Query::query(name.clone(), record_type);
            if let Some(found) = state.hosts.lookup_static_host(&query) {
                addrs.extend(found.answers().iter().filter_map(|r| r.data.ip_addr()));
            }
        }
        (!addrs.is_empty()).then_some(addrs)
    }
}

/// The hosts file's entries; none if it cannot be read (a machine may have none).
fn read_hosts(path: &Path) -> Hosts {
    let mut hosts = Hosts::default();
    if let Ok(file) = File::open(path)
        && let Err(error) = hosts.read_hosts_conf(file)
    {
        tracing::warn!(file = %path.display(), %error, "cannot read the hosts file");
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver_with_hosts(body: &str) -> (Resolver, PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "hga-hosts-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, body).unwrap();
        // A nameserver nobody runs: only the hosts file may answer.
        let nowhere = NameServerConfig::udp_and_tcp(IpAddr::from([127, 0, 0, 1]));
        let config = ResolverConfig::from_parts(None, Vec::new(), vec![nowhere]);
        let resolver = Resolver::with(
            config,
            ResolverOpts::default(),
            Duration::from_millis(200),
            &path,
        );
        (resolver, path)
    }

    #[tokio::test]
    async fn a_name_in_the_hosts_file_is_answered_from_it_alone() {
        let (resolver, path) =
            resolver_with_hosts("192.0.2.7 both.test\n2001:db8::7 both.test\n192.0.2.8 v4.test\n");
        let by = Instant::now() + Duration::from_secs(1);
        let both = resolver.lookup("both.test", by).await.unwrap();
        assert_eq!(
            both.addrs,
            vec![
                "2001:db8::7".parse::<IpAddr>().unwrap(),
                "192.0.2.7".parse().unwrap()
            ]
        );
        // Only an A record: the AAAA question is not sent to a nameserver.
        let v4 = resolver.lookup("v4.test", by).await.unwrap();
        assert_eq!(v4.addrs, vec!["192.0.2.8".parse::<IpAddr>().unwrap()]);
        assert!(v4.valid_until <= Instant::now() + HOSTS_LIFE);
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn an_invalid_name_is_said_so() {
        let (resolver, path) = resolver_with_hosts("");
        let by = Instant::now() + Duration::from_secs(1);
        let error = resolver.lookup("a..b", by).await.unwrap_err();
        assert_eq!(error, ResolveError::InvalidName("a..b".to_string()));
        let _ = std::fs::remove_file(path);
    }
}
