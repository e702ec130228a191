//! How the Redis store reaches its server: one server (TCP, TLS or a Unix
//! socket), the master a set of sentinels names, or a cluster. Everything
//! on the wire is the `redis` crate's (its TLS, its cluster client with
//! MOVED/ASK handling); this file picks addresses and bounds every step by
//! the URL's `timeout`.
//!
//! Sentinel: the crate's own Sentinel client waits without any timeout (no
//! connect timeout, no read timeout in 1.8), so one stalled sentinel would
//! hang a request thread for good. The steps of the Sentinel client
//! protocol are done here instead, with the crate's connections and
//! commands: ask each sentinel in turn for the master's address
//! (`SENTINEL GET-MASTER-ADDR-BY-NAME`), connect, check `ROLE`; ask again
//! when the master we knew refuses us or is no longer a master.

use super::redis_url::{RedisMode, RedisNode, RedisTls, RedisUrl};
use parking_lot::Mutex;
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConnection};
use redis::io::tcp::TcpSettings;
use redis::{
    Client, ClientTlsConfig, Cmd, Connection, ConnectionAddr, ConnectionLike, ErrorKind,
    IntoConnectionInfo, RedisConnectionInfo, RedisError, RedisResult, Role, ServerErrorKind,
    TlsCertificates, Value,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the store talks to.
pub enum Target {
    Single(Client),
    Sentinel(Sentinels),
    Cluster(ClusterClient),
}

/// One connection: to a server, or a cluster client's set of them.
pub enum Link {
    One(Connection),
    Cluster(Box<ClusterConnection>),
}

pub struct Sentinels {
    master_name: String,
    /// Each sentinel, with the URL's credentials and without them (for
    /// sentinels that have no password while the master has one).
    sentinels: Vec<(Client, Client)>,
    /// A template for the master's connection: credentials, db, TLS.
    url: RedisUrl,
    /// Where the master was last found.
    master: Mutex<Option<(String, u16)>>,
    /// Bumped when the master moves: connections from before are dropped.
    epoch: AtomicU64,
}

fn certificates(tls: &RedisTls) -> TlsCertificates {
    TlsCertificates {
        client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
            client_cert: cert.pem.clone(),
            client_key: key.pem.clone(),
        }),
        root_cert: tls.ca.as_ref().map(|ca| ca.pem.clone()),
    }
}

fn settings(url: &RedisUrl, auth: bool, db: u32) -> RedisConnectionInfo {
    let mut s = RedisConnectionInfo::default()
        .set_db(db as i64)
        .set_skip_set_lib_name();
    if auth {
        if let Some(user) = &url.username {
            s = s.set_username(user);
        }
        if let Some(pw) = &url.password {
            s = s.set_password(pw);
        }
    }
    s
}

/// Requests are small and each waits for its answer (the lock's release,
/// sent without waiting, is followed by the next request's command), so
/// Nagle's algorithm would only hold packets back; hiredis and phpredis
/// turn it off too, the `redis` crate does not by default.
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// A client for one node, with the URL's TLS settings.
fn client(url: &RedisUrl, node: &RedisNode, auth: bool, db: u32) -> RedisResult<Client> {
    let addr = match node {
        RedisNode::Tcp { host, port } if url.tls.is_some() => ConnectionAddr::TcpTls {
            host: host.clone(),
            port: *port,
            insecure: false,
            tls_params: None,
        },
        RedisNode::Tcp { host, port } => ConnectionAddr::Tcp(host.clone(), *port),
        RedisNode::Unix(path) => ConnectionAddr::Unix(path.clone()),
    };
    let info = addr
        .into_connection_info()?
        .set_tcp_settings(tcp_settings())
        .set_redis_settings(settings(url, auth, db));
    match &url.tls {
        Some(tls) => Client::build_with_tls(info, certificates(tls)),
        None => Client::open(info),
    }
}

fn left(deadline: Instant) -> RedisResult<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left < Duration::from_millis(1) {
        return Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        )));
    }
    Ok(left)
}

/// A connection to `client`, made and set up within `deadline`; reads and
/// writes then time out after `timeout`.
fn connect_one(client: &Client, deadline: Instant) -> RedisResult<Connection> {
    let con = client.get_connection_with_timeout(left(deadline)?)?;
    let step = left(deadline)?;
    con.set_read_timeout(Some(step))?;
    con.set_write_timeout(Some(step))?;
    Ok(con)
}

impl Target {
    pub fn new(url: &RedisUrl) -> RedisResult<Target> {
        Ok(match &url.mode {
            RedisMode::Single => Target::Single(client(url, &url.nodes[0], true, url.db)?),
            RedisMode::Sentinel { master } => {
                let sentinels = url
                    .nodes
                    .iter()
                    .map(|n| Ok((client(url, n, true, 0)?, client(url, n, false, 0)?)))
                    .collect::<RedisResult<_>>()?;
                Target::Sentinel(Sentinels {
                    master_name: master.clone(),
                    sentinels,
                    url: url.clone(),
                    master: Mutex::new(None),
                    epoch: AtomicU64::new(0),
                })
            }
            RedisMode::Cluster => {
                let seeds = url
                    .nodes
                    .iter()
                    .map(|n| match n {
                        RedisNode::Tcp { host, port } => ConnectionAddr::Tcp(host.clone(), *port),
                        RedisNode::Unix(path) => ConnectionAddr::Unix(path.clone()),
                    })
                    .collect::<Vec<_>>();
                let mut b = ClusterClientBuilder::new(seeds)
                    .tcp_settings(tcp_settings())
                    .connection_timeout(url.timeout)
                    .response_timeout(url.timeout)
                    // A redirection (MOVED, then ASK) or one reconnect,
                    // with short pauses: each attempt is bounded by
                    // `timeout`, so a dead node costs a few of them at most.
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100);
                if let Some(user) = &url.username {
                    b = b.username(user);
                }
                if let Some(pw) = &url.password {
                    b = b.password(pw);
                }
                if let Some(tls) = &url.tls {
                    b = b.tls(redis::TlsMode::Secure).certs(certificates(tls));
                }
                Target::Cluster(b.build()?)
            }
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// The epoch connections made now belong to; a pooled connection of
    /// an older one is not used again.
    pub fn epoch(&self) -> u64 {
        match self {
            Target::Sentinel(s) => s.epoch.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// A new connection, set up within `timeout`.
    pub fn connect(&self, timeout: Duration) -> RedisResult<Link> {
        let deadline = Instant::now() + timeout;
        match self {
            Target::Single(c) => connect_one(c, deadline).map(Link::One),
            Target::Sentinel(s) => s.connect(deadline).map(Link::One),
            Target::Cluster(c) => c.get_connection().map(|c| Link::Cluster(Box::new(c))),
        }
    }

    /// Where the master is now, for log lines (Sentinel only).
    pub fn current_master(&self) -> Option<String> {
        match self {
            Target::Sentinel(s) => s.master.lock().as_ref().map(|(h, p)| format!("{h}:{p}")),
            _ => None,
        }
    }

    /// A reply that says this connection no longer reaches the master (a
    /// demoted one): drop it and find the master again.
    pub fn is_stale(&self, e: &RedisError) -> bool {
        matches!(self, Target::Sentinel(_))
            && e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
    }

    /// After `is_stale`: the next connection asks the sentinels.
    pub fn forget_master(&self) {
        if let Target::Sentinel(s) = self {
            *s.master.lock() = None;
            s.epoch.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Sentinels {
    fn connect(&self, deadline: Instant) -> RedisResult<Connection> {
        let known = self.master.lock().clone();
        if let Some(addr) = &known {
            match self.connect_master(addr, deadline) {
                Ok(c) => return Ok(c),
                // Gone or demoted: ask the sentinels.
                Err(e) if left(deadline).is_err() => return Err(e),
                Err(_) => {}
            }
        }
        let addr = self.resolve(deadline)?;
        let con = self.connect_master(&addr, deadline)?;
        let mut master = self.master.lock();
        if master.as_ref() != Some(&addr) {
            if master.is_some() {
                self.epoch.fetch_add(1, Ordering::Relaxed);
            }
            *master = Some(addr);
        }
        Ok(con)
    }

    /// A connection to `addr`, if it is the master.
    fn connect_master(
        &self,
        (host, port): &(String, u16),
        deadline: Instant,
    ) -> RedisResult<Connection> {
        let node = RedisNode::Tcp {
            host: host.clone(),
            port: *port,
        };
        let mut con = connect_one(&client(&self.url, &node, true, self.url.db)?, deadline)?;
        match redis::cmd("ROLE").query::<Role>(&mut con)? {
            Role::Primary { .. } => Ok(con),
            _ => Err(RedisError::from((
                ErrorKind::Server(ServerErrorKind::ReadOnly),
                "not the master",
                format!(
                    "{host}:{port} is no longer master {}; the sentinels have not caught up yet",
                    self.master_name
                ),
            ))),
        }
    }

    /// Asks each sentinel in turn where the master is.
    fn resolve(&self, deadline: Instant) -> RedisResult<(String, u16)> {
        let mut last = None;
        for (authed, plain) in &self.sentinels {
            let mut answer = self.ask(authed, deadline);
            if let Err(e) = &answer {
                // A sentinel without a password refuses to be given one.
                let refused_auth = e.kind() == ErrorKind::AuthenticationFailed
                    || e.to_string().contains("without any password configured");
                if refused_auth && left(deadline).is_ok() {
                    answer = self.ask(plain, deadline);
                }
            }
            match answer {
                Ok(Some(addr)) => return Ok(addr),
                Ok(None) => {
                    last = Some(RedisError::from((
                        ErrorKind::Client,
                        "unknown master",
                        format!("a sentinel does not know master {}", self.master_name),
                    )))
                }
                Err(e) => last = Some(e),
            }
            if left(deadline).is_err() {
                break;
            }
        }
        Err(last.unwrap_or_else(|| left(deadline).unwrap_err()))
    }

    fn ask(&self, sentinel: &Client, deadline: Instant) -> RedisResult<Option<(String, u16)>> {
        let mut con = connect_one(sentinel, deadline)?;
        redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master_name)
            .query(&mut con)
    }
}

impl Link {
    pub fn set_timeouts(&self, timeout: Duration) -> RedisResult<()> {
        match self {
            Link::One(c) => {
                c.set_read_timeout(Some(timeout))?;
                c.set_write_timeout(Some(timeout))
            }
            Link::Cluster(c) => {
                c.set_read_timeout(Some(timeout))?;
                c.set_write_timeout(Some(timeout))
            }
        }
    }

    /// Runs `cmd` on every master of a cluster, or on the one server.
    /// `f` gets each node's connection in turn.
    pub fn each_master<T>(
        &mut self,
        mut f: impl FnMut(&mut dyn FnMut(&Cmd) -> RedisResult<Value>) -> RedisResult<T>,
    ) -> RedisResult<Vec<T>> {
        match self {
            Link::One(c) => Ok(vec![f(&mut |cmd: &Cmd| cmd.query(c))?]),
            Link::Cluster(c) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut **c)?;
                let mut out = Vec::new();
                for (host, port) in masters(&nodes) {
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port,
                    });
                    out.push(f(&mut |cmd: &Cmd| c.route_command(cmd, route.clone()))?);
                }
                Ok(out)
            }
        }
    }
}

/// The masters in `CLUSTER NODES` output (`id host:port@bus[,name] flags
/// …`), skipping ones flagged as failed.
fn masters(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let addr = f.nth(1)?;
            let flags = f.next()?;
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
                return None;
            }
            let hostport = addr.split(['@', ',']).next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

impl ConnectionLike for Link {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Link::One(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            Link::One(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            Link::One(c) => c.req_command(cmd),
            Link::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::One(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        match self {
            Link::One(c) => c.supports_pipelining(),
            Link::Cluster(c) => c.supports_pipelining(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Link::One(c) => c.check_connection(),
            Link::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Link::One(c) => c.is_open(),
            Link::Cluster(c) => c.is_open(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_masters_in_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host-b master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7002@17002 master,fail - 0 0 3 connected
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected
";
        assert_eq!(
            masters(nodes),
            vec![("127.0.0.1".into(), 7000), ("127.0.0.1".into(), 7001)]
        );
    }
}
