//! A real multi-node Docker Swarm on this one machine, for tests: every node
//! is its own `dockerd` (with its own containerd) in its own network, PID,
//! UTS and mount namespace, with its own IP address and data root; a
//! registry (Debian's `docker-registry`) that every node pulls from runs in
//! node 1's network namespace. The test that starts a [`Cluster`] owns it:
//! dropping it (also while unwinding from a panic) kills every process of
//! it and removes every namespace, link, firewall rule, cgroup and file it
//! made. Leftovers of a run that could not clean up (killed by SIGKILL) are
//! removed by the next [`Cluster::start`].
//!
//! Layout (`<id>` is the test process id, `<x>` a free /24 picked at start):
//!
//! ```text
//! host netns:  bridge scb<id> 10.213.<x>.254/24 ──┬─ veth scv<id>-1 ── netns scn<id>-1: eth0 10.213.<x>.1  (manager, registry :5000)
//!                                                  ├─ veth scv<id>-2 ── netns scn<id>-2: eth0 10.213.<x>.2  (worker)
//!                                                  └─ veth scv<id>-3 ── netns scn<id>-3: eth0 10.213.<x>.3  (worker)
//! node i:      nsenter --net=scn<id>-i unshare --uts --pid --fork --kill-child --mount-proc sh start.sh
//!              └─ dockerd (PID 1 of the node's PID namespace) ─ containerd ─ shims ─ containers
//!              data root /var/tmp/stackctl-cluster/<id>/node<i>/data, exec root /run/sc-<id>-<i>,
//!              socket unix:///run/sc-<id>-<i>/docker.sock, cgroup parent /sc-<id>-<i>
//! ```
//!
//! Because dockerd is PID 1 of its node's PID namespace, SIGKILL of it takes
//! everything of that node down at once (containerd, shims, fuse-overlayfs,
//! containers): a node that loses power. Its mounts live in the node's own
//! mount namespace and vanish with it; none reaches the host's.
//!
//! What this kernel lacks and how the cluster lives with it: there is no
//! IPVS (`CONFIG_IP_VS` unset), so Swarm's ingress routing mesh and VIP
//! load balancing do not work; services are reached over an overlay network
//! with `--endpoint-mode dnsrr` (overlay VXLAN works across the nodes).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Every cluster's files live under here, one directory per id.
pub const WORK_BASE: &str = "/var/tmp/stackctl-cluster";
/// The nodes' subnet is 10.213.<x>.0/24.
const NET_PREFIX: &str = "10.213";
/// Swarm's pool for overlay networks (only ever seen inside the nodes).
const OVERLAY_POOL: &str = "10.214.0.0/16";
pub const REGISTRY_PORT: u16 = 5000;
/// The bound on every docker CLI call.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(120);
const DAEMON_TIMEOUT: Duration = Duration::from_secs(90);
const STORAGE_DRIVERS: &[&str] = &["fuse-overlayfs", "vfs"];

/// One cluster per process at a time: the names are made of the pid.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Why a cluster cannot run here, or `None` when it can (scripts/
/// test-setup.sh installs what it needs).
pub fn unavailable() -> Option<String> {
    if std::env::var_os("STACKCTL_SKIP_CLUSTER").is_some() {
        return Some("STACKCTL_SKIP_CLUSTER is set".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, bridges, nested dockerd)".into());
    }
    if !cfg!(target_os = "linux") {
        return Some("needs Linux namespaces".into());
    }
    for tool in [
        "dockerd",
        "containerd",
        "docker",
        "ip",
        "nsenter",
        "unshare",
        "iptables",
    ] {
        if which(tool).is_none() {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    if !Path::new("/sys/fs/cgroup").is_dir() {
        return Some("no /sys/fs/cgroup".into());
    }
    if which("docker-registry").is_none() {
        return Some(
            "docker-registry is not installed (scripts/test-setup.sh installs it: apt-get install docker-registry)".into(),
        );
    }
    None
}

pub struct Cluster {
    id: String,
    net: u8,
    work: PathBuf,
    driver: String,
    nodes: Vec<Node>,
    registry: Option<Child>,
    swarm_ids: Vec<String>,
    torn_down: bool,
}

struct Node {
    proc: Option<Child>,
}

impl Cluster {
    /// Starts `n` (1..=9) nodes, makes node 1 the Swarm manager and the
    /// others workers, starts the registry, and returns once every node is
    /// Ready. Panics (after cleaning up) with the daemons' logs on failure.
    pub fn start(n: usize) -> Cluster {
        assert!((1..=9).contains(&n), "1 to 9 nodes");
        assert!(
            !ACTIVE.swap(true, Ordering::SeqCst),
            "one cluster per process at a time"
        );
        clean_leftovers();
        let id = std::process::id().to_string();
        // Our own earlier cluster in this process (dropped) is gone; clean
        // anything of this id anyway.
        teardown_id(&id);
        let net = pick_net(std::process::id());
        let work = PathBuf::from(WORK_BASE).join(&id);
        fs::create_dir_all(work.join("docker-config")).expect("create work dir");
        fs::write(work.join("owner"), own_start_time().unwrap_or_default()).expect("owner");
        let mut c = Cluster {
            id,
            net,
            work,
            driver: String::new(),
            nodes: (0..n).map(|_| Node { proc: None }).collect(),
            registry: None,
            swarm_ids: vec![String::new(); n],
            torn_down: false,
        };
        c.make_network();
        let mut errors = Vec::new();
        let driver = std::env::var("STACKCTL_CLUSTER_STORAGE").ok();
        let drivers: Vec<&str> = match &driver {
            Some(d) => vec![d.as_str()],
            None => STORAGE_DRIVERS.to_vec(),
        };
        for d in drivers {
            c.driver = d.to_string();
            match c.start_daemons() {
                Ok(()) => {
                    errors.clear();
                    break;
                }
                Err(e) => {
                    eprintln!("cluster: storage driver {d} failed, {e}");
                    errors.push(format!("storage driver {d}: {e}"));
                    for i in 1..=n {
                        c.kill_node(i);
                        let _ = fs::remove_dir_all(c.node_dir(i).join("data"));
                    }
                }
            }
        }
        if !errors.is_empty() {
            panic!("cluster: no node daemon started:\n{}", errors.join("\n"));
        }
        c.start_registry();
        c.form_swarm();
        c
    }

    // ---- names and addresses -------------------------------------------

    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
    pub fn storage_driver(&self) -> &str {
        &self.driver
    }
    pub fn work_dir(&self) -> &Path {
        &self.work
    }
    /// The address of node `i` (1-based) on the cluster's bridge.
    pub fn node_addr(&self, i: usize) -> String {
        format!("{NET_PREFIX}.{}.{i}", self.net)
    }
    /// The host's own address on the bridge.
    pub fn host_addr(&self) -> String {
        format!("{NET_PREFIX}.{}.254", self.net)
    }
    pub fn subnet(&self) -> String {
        format!("{NET_PREFIX}.{}.0/24", self.net)
    }
    /// The node's hostname (its own UTS namespace): what Swarm calls it.
    pub fn node_name(&self, i: usize) -> String {
        format!("sc-node{i}")
    }
    /// The node's Swarm node ID.
    pub fn node_id(&self, i: usize) -> &str {
        &self.swarm_ids[i - 1]
    }
    /// A DOCKER_HOST value for node `i`'s daemon.
    pub fn node_host(&self, i: usize) -> String {
        format!("unix://{}/docker.sock", exec_root(&self.id, i))
    }
    pub fn manager_host(&self) -> String {
        self.node_host(1)
    }
    /// `host:port` of the registry every node pulls from (insecure, HTTP).
    pub fn registry(&self) -> String {
        format!("{}:{REGISTRY_PORT}", self.node_addr(1))
    }
    pub fn netns(&self, i: usize) -> String {
        netns_name(&self.id, i)
    }
    pub fn bridge(&self) -> String {
        format!("scb{}", self.id)
    }
    fn veth(&self, i: usize) -> String {
        format!("scv{}-{i}", self.id)
    }
    fn node_dir(&self, i: usize) -> PathBuf {
        self.work.join(format!("node{i}"))
    }
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("dockerd.log")
    }

    // ---- docker CLI ----------------------------------------------------

    /// `docker -H <node i> args…`, bounded by [`CMD_TIMEOUT`].
    pub fn docker(&self, i: usize, args: &[&str]) -> Output {
        self.docker_within(i, args, CMD_TIMEOUT)
    }

    /// `docker -H <node i> args…`, killed after `limit`.
    pub fn docker_within(&self, i: usize, args: &[&str], limit: Duration) -> Output {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(self.node_host(i))
            .args(args)
            .env("DOCKER_CONFIG", self.work.join("docker-config"))
            .env("DOCKER_BUILDKIT", "0")
            .env("DOCKER_CLI_HINTS", "false")
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .env_remove("DOCKER_API_VERSION");
        run_timeout(&mut c, limit)
    }

    /// The same, panicking with stderr (and the daemons' logs) on failure;
    /// returns stdout, trimmed.
    pub fn docker_ok(&self, i: usize, args: &[&str]) -> String {
        let o = self.docker(i, args);
        if !o.status.success() {
            panic!(
                "docker -H node{i} {}: {}\n{}\n{}",
                args.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim(),
                self.diagnostics()
            );
        }
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// On the manager.
    pub fn manager(&self, args: &[&str]) -> String {
        self.docker_ok(1, args)
    }

    /// The manager's view of node `i`: "ready", "down", "unknown", ….
    pub fn node_state(&self, i: usize) -> String {
        let o = self.docker_within(
            1,
            &[
                "node",
                "inspect",
                self.node_id(i),
                "--format",
                "{{.Status.State}}",
            ],
            Duration::from_secs(15),
        );
        if o.status.success() {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        } else {
            format!("? {}", String::from_utf8_lossy(&o.stderr).trim())
        }
    }

    /// Waits until the manager reports node `i` in `state`; how long it took.
    pub fn wait_node_state(&self, i: usize, state: &str, limit: Duration) -> Duration {
        let t = Instant::now();
        loop {
            if self.node_state(i) == state {
                return t.elapsed();
            }
            if t.elapsed() > limit {
                panic!(
                    "node{i} not {state} after {limit:?} (is {})\n{}",
                    self.node_state(i),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The nodes (hostnames) of a service's tasks that should run and do,
    /// as the manager sees them.
    pub fn running_on(&self, service: &str) -> Vec<String> {
        let o = self.docker_within(
            1,
            &[
                "service",
                "ps",
                service,
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Node}}\t{{.CurrentState}}",
            ],
            Duration::from_secs(20),
        );
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .filter(|(_, state)| state.starts_with("Running"))
            .map(|(node, _)| node.to_string())
            .collect()
    }

    /// Polls `f` every 250 ms until it gives a value; panics after `limit`
    /// with the cluster's diagnostics.
    pub fn wait_for<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let t = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if t.elapsed() > limit {
                panic!("{what}: not after {limit:?}\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Node list, service tasks and the tail of every daemon's log.
    pub fn diagnostics(&self) -> String {
        let mut s = String::from("---- cluster diagnostics ----\n");
        let o = self.docker_within(1, &["node", "ls"], Duration::from_secs(15));
        s += &String::from_utf8_lossy(&o.stdout);
        s += &String::from_utf8_lossy(&o.stderr);
        let o = self.docker_within(
            1,
            &["service", "ls", "--format", "{{.Name}}"],
            Duration::from_secs(15),
        );
        for svc in String::from_utf8_lossy(&o.stdout).lines() {
            let o = self.docker_within(
                1,
                &["service", "ps", "--no-trunc", svc],
                Duration::from_secs(15),
            );
            s += &String::from_utf8_lossy(&o.stdout);
        }
        for i in 1..=self.len() {
            s += &format!(
                "---- node{i} dockerd log (tail) ----\n{}\n",
                self.log_tail(i, 25)
            );
        }
        s
    }

    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        tail(&self.log_path(i), lines)
    }

    // ---- node loss -----------------------------------------------------

    /// Node loss: SIGKILL node `i`'s dockerd, which is PID 1 of the node's
    /// PID namespace, so its containerd, shims and containers die with it.
    /// Returns once none of its processes is left.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i - 1].proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        let root = exec_root(&self.id, i);
        let dir = self.node_dir(i);
        let cg = format!("sc-{}-{i}", self.id);
        let gone = wait_gone(Duration::from_secs(20), || {
            let mut pids = pids_matching(|arg| {
                arg == root
                    || arg.contains(&format!("{root}/"))
                    || arg.starts_with(dir.to_str().unwrap_or("-"))
            });
            pids.extend(cgroup_pids(&cg));
            pids
        });
        if !gone {
            eprintln!("cluster: processes of node{i} survived SIGKILL for 20 s");
        }
    }

    /// Brings node `i` back with the same data root (it rejoins the swarm
    /// by itself); returns once its daemon answers.
    pub fn start_node(&mut self, i: usize) {
        // The killed node's pid files name pids of its old PID namespace;
        // in the new one such a pid may be another process, and dockerd
        // would wait for it as if it were its containerd.
        let root = exec_root(&self.id, i);
        let _ = fs::remove_file(Path::new(&root).join("docker.pid"));
        let _ = fs::remove_file(Path::new(&root).join("containerd/containerd.pid"));
        self.spawn_node(i)
            .unwrap_or_else(|e| panic!("start node{i}: {e}"));
        if let Err(e) = self.wait_daemon(i, DAEMON_TIMEOUT) {
            panic!("node{i} did not come back: {e}");
        }
    }

    /// Network loss: the node keeps running but its link is down.
    pub fn cut_link(&self, i: usize) {
        must(&["ip", "link", "set", &self.veth(i), "down"]);
    }

    pub fn restore_link(&self, i: usize) {
        must(&["ip", "link", "set", &self.veth(i), "up"]);
    }

    // ---- teardown ------------------------------------------------------

    /// Tears the cluster down now (Drop does the same).
    pub fn shutdown(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                let _ = p.kill();
                let _ = p.wait();
            }
        }
        if let Some(mut p) = self.registry.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        teardown_id(&self.id);
        ACTIVE.store(false, Ordering::SeqCst);
    }

    // ---- start-up ------------------------------------------------------

    fn make_network(&self) {
        let br = self.bridge();
        must(&["ip", "link", "add", &br, "type", "bridge"]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.host_addr()),
            "dev",
            &br,
        ]);
        must(&["ip", "link", "set", &br, "up"]);
        // br_netfilter hands bridged frames to the host's FORWARD chain,
        // whose policy Docker sets to DROP: let the bridge talk to itself.
        must(&[
            "iptables",
            "-w",
            "-I",
            "FORWARD",
            "1",
            "-i",
            &br,
            "-o",
            &br,
            "-m",
            "comment",
            "--comment",
            &format!("sc-cluster-{}", self.id),
            "-j",
            "ACCEPT",
        ]);
        for i in 1..=self.len() {
            let ns = self.netns(i);
            let veth = self.veth(i);
            must(&["ip", "netns", "add", &ns]);
            must(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            must(&["ip", "link", "set", &veth, "master", &br, "up"]);
            let addr = format!("{}/24", self.node_addr(i));
            must(&["ip", "-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            must(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &self.host_addr(),
            ]);
        }
    }

    fn start_daemons(&mut self) -> Result<(), String> {
        for i in 1..=self.len() {
            self.spawn_node(i)?;
        }
        for i in 1..=self.len() {
            self.wait_daemon(i, DAEMON_TIMEOUT)?;
        }
        Ok(())
    }

    fn spawn_node(&mut self, i: usize) -> Result<(), String> {
        let dir = self.node_dir(i);
        let root = exec_root(&self.id, i);
        fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        fs::write(dir.join("daemon.json"), "{}\n").map_err(|e| e.to_string())?;
        let d = dir.to_string_lossy();
        // `ip netns exec` would remount /sys and so hide the cgroup
        // hierarchies dockerd needs: enter the netns with nsenter and mount
        // the netns's sysfs ourselves, the cgroups bound back over it. The
        // host's /run/docker and /run/containerd (if any) are hidden so the
        // node's dockerd starts its own containerd under its exec root.
        let script = format!(
            r#"set -e
if [ -e /run/containerd ]; then mount -t tmpfs -o mode=0711 tmpfs /run/containerd; fi
if [ -e /run/docker ]; then mount -t tmpfs -o mode=0700 tmpfs /run/docker; fi
mkdir -p {d}/cg
mount --rbind /sys/fs/cgroup {d}/cg
mount -t sysfs sysfs /sys
mount --rbind {d}/cg /sys/fs/cgroup
umount -l {d}/cg
hostname {name}
exec dockerd --config-file {d}/daemon.json --data-root {d}/data \
  --exec-root {root} --pidfile {root}/docker.pid -H unix://{root}/docker.sock \
  --storage-driver {driver} --insecure-registry {subnet} \
  --bip 172.31.{i}.1/24 --cgroup-parent /sc-{id}-{i} --iptables=true
"#,
            name = self.node_name(i),
            driver = self.driver,
            subnet = self.subnet(),
            id = self.id,
        );
        let script_path = dir.join("start.sh");
        fs::write(&script_path, script).map_err(|e| e.to_string())?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = dies_with_us(Command::new("nsenter"))
            .arg(format!("--net=/run/netns/{}", self.netns(i)))
            .args([
                "unshare",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "sh",
            ])
            .arg(&script_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawn nsenter: {e}"))?;
        self.nodes[i - 1].proc = Some(child);
        Ok(())
    }

    fn wait_daemon(&mut self, i: usize, limit: Duration) -> Result<(), String> {
        let t = Instant::now();
        loop {
            if let Some(p) = self.nodes[i - 1].proc.as_mut() {
                if let Ok(Some(status)) = p.try_wait() {
                    self.nodes[i - 1].proc = None;
                    return Err(format!(
                        "node{i} dockerd exited ({status}):\n{}",
                        self.log_tail(i, 30)
                    ));
                }
            }
            let o = self.docker_within(
                i,
                &["version", "--format", "{{.Server.Version}}"],
                Duration::from_secs(5),
            );
            if o.status.success() {
                return Ok(());
            }
            if t.elapsed() > limit {
                return Err(format!(
                    "node{i} dockerd not answering after {limit:?}:\n{}",
                    self.log_tail(i, 30)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn start_registry(&mut self) {
        let dir = self.work.join("registry");
        fs::create_dir_all(dir.join("data")).expect("mkdir registry");
        let cfg = dir.join("config.yml");
        fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n",
                dir.join("data").display(),
                self.registry()
            ),
        )
        .expect("write registry config");
        let log = fs::File::create(dir.join("registry.log")).expect("registry log");
        let log2 = log.try_clone().expect("registry log");
        let child = dies_with_us(Command::new("nsenter"))
            .arg(format!("--net=/run/netns/{}", self.netns(1)))
            .arg(which("docker-registry").expect("docker-registry"))
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn docker-registry");
        self.registry = Some(child);
        let addr: SocketAddr = self.registry().parse().expect("registry address");
        let t = Instant::now();
        loop {
            if http_get(addr, "/v2/")
                .is_some_and(|r| r.lines().next().is_some_and(|l| l.contains(" 200 ")))
            {
                return;
            }
            if t.elapsed() > Duration::from_secs(30) {
                panic!(
                    "registry on {addr} not answering after 30 s:\n{}",
                    tail(&dir.join("registry.log"), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn form_swarm(&mut self) {
        let a1 = self.node_addr(1);
        self.manager(&[
            "swarm",
            "init",
            "--advertise-addr",
            &a1,
            "--listen-addr",
            &format!("{a1}:2377"),
            "--default-addr-pool",
            OVERLAY_POOL,
            "--default-addr-pool-mask-length",
            "24",
        ]);
        let token = self.manager(&["swarm", "join-token", "-q", "worker"]);
        for i in 2..=self.len() {
            let a = self.node_addr(i);
            self.docker_ok(
                i,
                &[
                    "swarm",
                    "join",
                    "--advertise-addr",
                    &a,
                    "--listen-addr",
                    &format!("{a}:2377"),
                    "--token",
                    &token,
                    &format!("{a1}:2377"),
                ],
            );
        }
        for i in 1..=self.len() {
            self.swarm_ids[i - 1] = self.docker_ok(i, &["info", "--format", "{{.Swarm.NodeID}}"]);
        }
        for i in 1..=self.len() {
            self.wait_node_state(i, "ready", Duration::from_secs(60));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.torn_down {
            eprintln!("cluster: tearing down after a panic; daemon logs:");
            for i in 1..=self.len() {
                eprintln!("---- node{i} ----\n{}", self.log_tail(i, 20));
            }
        }
        self.teardown();
    }
}

// ---- helpers (no cluster needed) ----------------------------------------

fn exec_root(id: &str, i: usize) -> String {
    format!("/run/sc-{id}-{i}")
}

fn netns_name(id: &str, i: usize) -> String {
    format!("scn{id}-{i}")
}

/// The command gets SIGKILL when the thread that spawned it ends (the test
/// thread, which owns the [`Cluster`]), so a test killed with SIGKILL leaves
/// no daemon running (its namespaces, links and files are removed by the
/// next [`Cluster::start`]). nsenter execs unshare, which keeps this; its
/// `--kill-child` passes the SIGKILL on to the node's dockerd, PID 1 of the
/// node, whose death ends every process of the node.
fn dies_with_us(mut cmd: Command) -> Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs `cmd` with stdin closed, killing it after `limit`; a command that
/// could not start or timed out has a non-zero status and says so in stderr.
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Output {
                status: ExitStatus::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: format!("cannot run {cmd:?}: {e}").into_bytes(),
            }
        }
    };
    let reader = |r: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            let _ = tx.send(v);
        });
        rx
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                timed_out = true;
                break child.wait().unwrap_or(ExitStatus::from_raw(9));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break ExitStatus::from_raw(1 << 8),
        }
    };
    // A grandchild holding the pipe open must not hang us.
    let stdout = out.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    let mut stderr = err.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(format!("\n(killed after {limit:?})").as_bytes());
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

fn run(args: &[&str]) -> Output {
    run_timeout(
        Command::new(args[0]).args(&args[1..]),
        Duration::from_secs(30),
    )
}

fn must(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "{}: {}\n{}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stderr).trim()
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain([
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ])
        .map(|d| Path::new(d).join(tool))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
    found
}

fn tail(p: &Path, lines: usize) -> String {
    let s = fs::read(p).unwrap_or_default();
    let s = String::from_utf8_lossy(&s);
    // dockerd's gRPC chatter says nothing about what went wrong.
    let v: Vec<&str> = s.lines().filter(|l| !l.contains("module=grpc")).collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// One HTTP/1.0 GET over a plain TCP connection (2 s timeouts); the response.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .ok()?;
    let mut v = Vec::new();
    s.take(1 << 20).read_to_end(&mut v).ok()?;
    Some(String::from_utf8_lossy(&v).to_string())
}

/// A /24 in 10.213.0.0/16 that nothing on the host uses.
fn pick_net(pid: u32) -> u8 {
    let used = must(&["ip", "-4", "-o", "addr", "show"]) + &must(&["ip", "-4", "route", "show"]);
    (0..200u32)
        .map(|k| (20 + (pid + k) % 200) as u8)
        .find(|x| !used.contains(&format!("{NET_PREFIX}.{x}.")))
        .expect("no free 10.213.x.0/24")
}

fn stat_start_time(pid: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

fn own_start_time() -> Option<String> {
    stat_start_time(&std::process::id().to_string())
}

/// The process that made cluster `id` still runs.
fn owner_alive(id: &str) -> bool {
    if id == std::process::id().to_string() {
        return true;
    }
    let Some(now) = stat_start_time(id) else {
        return false;
    };
    match fs::read_to_string(Path::new(WORK_BASE).join(id).join("owner")) {
        Ok(recorded) => recorded.trim() == now,
        // No record (cleaned half-way): a live pid may be the owner.
        Err(_) => true,
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `<digits>` of `<prefix><digits><rest>`, when rest is "" or starts with '-'.
fn id_of(name: &str, prefix: &str) -> Option<String> {
    let rest = name.strip_prefix(prefix)?;
    let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = &rest[id.len()..];
    (all_digits(&id) && (after.is_empty() || after.starts_with('-') || after.starts_with('@')))
        .then_some(id)
}

/// Ids of every cluster that left something on this machine.
fn leftover_ids() -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for line in run(&["ip", "netns", "list"]).stdout.split(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if let Some(name) = line.split_whitespace().next() {
            ids.extend(id_of(name, "scn"));
        }
    }
    for line in String::from_utf8_lossy(&run(&["ip", "-o", "link", "show"]).stdout).lines() {
        if let Some(name) = line.split(": ").nth(1) {
            ids.extend(id_of(name, "scb").or_else(|| id_of(name, "scv")));
        }
    }
    for dir in [WORK_BASE, "/run"] {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if dir == WORK_BASE && all_digits(&n) {
                    ids.insert(n);
                } else if dir == "/run" {
                    ids.extend(id_of(&n, "sc-"));
                }
            }
        }
    }
    for line in String::from_utf8_lossy(&run(&["iptables", "-w", "-S", "FORWARD"]).stdout).lines() {
        if let Some(pos) = line.find("sc-cluster-") {
            ids.extend(id_of(&line[pos..], "sc-cluster-"));
        }
    }
    for h in cgroup_hierarchies() {
        if let Ok(rd) = fs::read_dir(&h) {
            for e in rd.flatten() {
                ids.extend(id_of(&e.file_name().to_string_lossy(), "sc-"));
            }
        }
    }
    ids
}

fn clean_leftovers() {
    for id in leftover_ids() {
        if !owner_alive(&id) {
            eprintln!("cluster: removing leftovers of cluster {id}");
            teardown_id(&id);
        }
    }
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut v = vec![base.to_path_buf()];
    if let Ok(rd) = fs::read_dir(base) {
        v.extend(rd.flatten().map(|e| e.path()));
    }
    v.retain(|p| p.join("cgroup.procs").is_file());
    v
}

/// Our cgroup directories (`sc-<id>-<i>` or, with `prefix` "sc-<id>-", all
/// nodes) in every hierarchy.
fn cgroup_dirs(prefix: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for h in cgroup_hierarchies() {
        if let Ok(rd) = fs::read_dir(&h) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n == prefix || n.starts_with(prefix) && prefix.ends_with('-') {
                    v.push(e.path());
                }
            }
        }
    }
    v
}

fn cgroup_pids(prefix: &str) -> Vec<i32> {
    fn walk(d: &Path, out: &mut Vec<i32>) {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut v = Vec::new();
    for d in cgroup_dirs(prefix) {
        walk(&d, &mut v);
    }
    v.sort_unstable();
    v.dedup();
    v
}

fn rmdir_tree(d: &Path) -> bool {
    if let Ok(rd) = fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    fs::remove_dir(d).is_ok() || !d.exists()
}

/// Pids of processes one of whose arguments satisfies `f`.
fn pids_matching(f: impl Fn(&str) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut v = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd
            .split(|b| *b == 0)
            .any(|a| f(&String::from_utf8_lossy(a)))
        {
            v.push(pid);
        }
    }
    v
}

fn pids_named(comm: &str) -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                if fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm) {
                    v.push(pid);
                }
            }
        }
    }
    v
}

fn kill9(pid: i32) {
    // SAFETY: kill(2) with a concrete pid of a process we identified.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// SIGKILLs what `pids` returns until it returns nothing (true) or `limit`.
fn wait_gone(limit: Duration, pids: impl Fn() -> Vec<i32>) -> bool {
    let t = Instant::now();
    loop {
        let v = pids();
        if v.is_empty() {
            return true;
        }
        if t.elapsed() > limit {
            return false;
        }
        for p in v {
            kill9(p);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes everything cluster `id` made: processes, mounts, namespaces,
/// links, the firewall rule, cgroups, files. Idempotent.
fn teardown_id(id: &str) {
    let work = format!("{WORK_BASE}/{id}/");
    let run_prefix = format!("/run/sc-{id}-");
    let cg_prefix = format!("sc-{id}-");
    let gone = wait_gone(Duration::from_secs(20), || {
        let mut v = pids_matching(|a| a.contains(&work) || a.contains(&run_prefix));
        v.extend(cgroup_pids(&cg_prefix));
        v
    });
    if !gone {
        eprintln!("cluster {id}: some processes survived SIGKILL for 20 s");
    }
    // Mounts are in the nodes' own mount namespaces, gone with them; any
    // that reached this one are lazily unmounted.
    if let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") {
        let mut points: Vec<String> = mi
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&work) || m.starts_with(&run_prefix))
            .collect();
        points.reverse();
        for m in points {
            let _ = run(&["umount", "-l", &m]);
        }
    }
    for line in String::from_utf8_lossy(&run(&["ip", "netns", "list"]).stdout).lines() {
        if let Some(name) = line.split_whitespace().next() {
            if id_of(name, "scn").as_deref() == Some(id) {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
    }
    for line in String::from_utf8_lossy(&run(&["ip", "-o", "link", "show"]).stdout).lines() {
        if let Some(name) = line.split(": ").nth(1) {
            let name = name.split('@').next().unwrap_or(name);
            if id_of(name, "scv").as_deref() == Some(id)
                || id_of(name, "scb").as_deref() == Some(id)
            {
                let _ = run(&["ip", "link", "del", name]);
            }
        }
    }
    let tag = format!("sc-cluster-{id}");
    for line in String::from_utf8_lossy(&run(&["iptables", "-w", "-S", "FORWARD"]).stdout).lines() {
        if line.split_whitespace().any(|w| w == tag) {
            if let Some(spec) = line.strip_prefix("-A ") {
                let mut args = vec!["iptables", "-w", "-D"];
                args.extend(spec.split_whitespace());
                let _ = run(&args);
            }
        }
    }
    let t = Instant::now();
    loop {
        let left: Vec<PathBuf> = cgroup_dirs(&cg_prefix)
            .into_iter()
            .filter(|d| !rmdir_tree(d))
            .collect();
        if left.is_empty() {
            break;
        }
        if t.elapsed() > Duration::from_secs(10) {
            eprintln!("cluster {id}: cgroups left: {left:?}");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Ok(rd) = fs::read_dir("/run") {
        for e in rd.flatten() {
            if id_of(&e.file_name().to_string_lossy(), "sc-").as_deref() == Some(id) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir_all(&work) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("cluster {id}: cannot remove {work}: {e}");
        }
    }
}
