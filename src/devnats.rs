//! A local `nats-server` child process with JetStream, for `jetwatch dev`, tests and
//! benchmarks.
//!
//! The binary is found through `NATS_SERVER_BIN`, then the project's tools folder
//! (`.tools/nats-server-<version>/nats-server`, installed by `scripts/install-nats.sh`), then
//! `PATH`. The server picks a free port itself (`-p -1`) and reports it through a ports file,
//! so parallel tests never race for ports. Dropping a [`NatsServer`] stops the process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server version the project pins.
pub const PINNED_VERSION: &str = "2.15.1";

/// The command that installs the pinned server.
pub const INSTALL_HINT: &str = "bash scripts/install-nats.sh";

/// Why the server could not be found or started.
#[derive(Debug, thiserror::Error)]
pub enum DevNatsError {
    /// No binary was found.
    #[error(
        "nats-server {PINNED_VERSION} was not found (looked at $NATS_SERVER_BIN, {tools} and \
         PATH); install it with `{INSTALL_HINT}` from the project root"
    )]
    NotFound {
        /// The tools path that was checked.
        tools: String,
    },
    /// Spawning or waiting failed.
    #[error("nats-server: {0}")]
    Io(#[from] std::io::Error),
    /// The server did not report its port in time.
    #[error("nats-server did not become ready within {0:?}; see {1}")]
    NotReady(Duration, String),
    /// Another process uses the data directory.
    #[error(
        "the data directory {dir} is in use by pid {pid} (another `jetwatch dev`, or a \
         nats-server left from one); stop it, or pass another --data-dir"
    )]
    InUse {
        /// The directory.
        dir: String,
        /// The process using it, as far as known.
        pid: String,
    },
    /// The requested port is taken.
    #[error(
        "port {0} is in use; stop what listens there, or pass --nats-port 0 for any free port"
    )]
    PortInUse(u16),
}

/// The project's tools folder path for the pinned server.
pub fn tools_binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools")
        .join(format!("nats-server-{PINNED_VERSION}"))
        .join("nats-server")
}

/// Finds the nats-server binary.
pub fn find_binary() -> Result<PathBuf, DevNatsError> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let tools = tools_binary();
    if tools.is_file() {
        return Ok(tools);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(DevNatsError::NotFound {
        tools: tools.display().to_string(),
    })
}

/// A running nats-server with JetStream.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    store_dir: PathBuf,
    /// A configuration file passed with `-c` (command-line flags still win).
    config: Option<PathBuf>,
    /// The lock on the data directory, held while this value lives (and released by the
    /// system when the process dies, however it dies).
    _lock: std::fs::File,
    /// Run the server so that it dies with this process (`jetwatch dev`).
    die_with_parent: bool,
}

/// The lock file of a data directory.
const LOCK_FILE: &str = "jetwatch-dev.lock";

/// Locks `store_dir` for this process, or says who holds it: another process with the lock,
/// or a nats-server still running on the directory (left from a killed `jetwatch dev`).
fn lock_store(store_dir: &Path) -> Result<std::fs::File, DevNatsError> {
    use std::io::{Seek, Write};
    let path = store_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)?;
    let in_use = |pid: String| DevNatsError::InUse {
        dir: store_dir.display().to_string(),
        pid,
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(in_use(pid.trim().to_owned()));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    if let Some(pid) = running_server(store_dir) {
        return Err(in_use(format!("{pid} (nats-server)")));
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// The pid of a nats-server that announced itself in `store_dir` (its ports file) and still
/// runs.
pub fn running_server(store_dir: &Path) -> Option<u32> {
    std::fs::read_dir(store_dir.join("ports"))
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: u32 = name
                .strip_suffix(".ports")?
                .rsplit('_')
                .next()?
                .parse()
                .ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            (comm.trim() == "nats-server" && !zombie).then_some(pid)
        })
}

impl NatsServer {
    /// Starts a server storing JetStream data in `store_dir`, on `port` (0: a free port chosen
    /// by the server), listening on 127.0.0.1 only.
    pub fn start(store_dir: &Path, port: u16) -> Result<NatsServer, DevNatsError> {
        NatsServer::start_with_config(store_dir, port, "")
    }

    /// Like [`NatsServer::start`], for `jetwatch dev`: the server gets SIGKILL when the
    /// calling thread's process dies, even by SIGKILL (through `setpriv --pdeathsig` when the
    /// system has it). Call it from a thread that lives as long as the process (the kernel
    /// sends the signal when the thread that started the child exits).
    pub fn start_owned(store_dir: &Path, port: u16) -> Result<NatsServer, DevNatsError> {
        NatsServer::start_inner(store_dir, port, "", true)
    }

    /// Like [`NatsServer::start`], with `config` (nats-server configuration syntax, e.g.
    /// `max_pending: 1MB`) written to a file in `store_dir` and passed with `-c`.
    pub fn start_with_config(
        store_dir: &Path,
        port: u16,
        config: &str,
    ) -> Result<NatsServer, DevNatsError> {
        NatsServer::start_inner(store_dir, port, config, false)
    }

    fn start_inner(
        store_dir: &Path,
        port: u16,
        config: &str,
        die_with_parent: bool,
    ) -> Result<NatsServer, DevNatsError> {
        let bin = find_binary()?;
        std::fs::create_dir_all(store_dir)?;
        let lock = lock_store(store_dir)?;
        if port != 0 && std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(DevNatsError::PortInUse(port));
        }
        let config = if config.trim().is_empty() {
            None
        } else {
            let path = store_dir.join("nats-server.conf");
            std::fs::write(&path, config)?;
            Some(path)
        };
        let mut server = NatsServer {
            child: None,
            bin,
            port,
            store_dir: store_dir.to_path_buf(),
            config,
            _lock: lock,
            die_with_parent,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), DevNatsError> {
        let ports_dir = self.store_dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        let log = self.store_dir.join("nats-server.log");
        let port_arg = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        // `setpriv --pdeathsig` sets the parent-death signal and then executes the server in
        // the same process: no code of ours runs between fork and exec.
        let setpriv = Path::new("/usr/bin/setpriv");
        let mut command = if self.die_with_parent && setpriv.is_file() {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(&self.bin);
            c
        } else {
            Command::new(&self.bin)
        };
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(&self.store_dir)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(port) = read_ports_file(&ports_dir) {
                self.port = port;
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(DevNatsError::Io(std::io::Error::other(format!(
                        "exited with {status}; see {}",
                        log.display()
                    ))));
                }
            }
            if Instant::now() > deadline {
                return Err(DevNatsError::NotReady(
                    Duration::from_secs(20),
                    log.display().to_string(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }

    /// Starts the server again on the same port and store (after [`NatsServer::stop`] or
    /// [`NatsServer::kill`]).
    pub fn restart(&mut self) -> Result<(), DevNatsError> {
        self.stop();
        self.spawn()
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of nats-servers with JetStream on loopback, for tests and benchmarks: each node
/// has its own free client and route ports and its own store, and routes to every other node.
/// Nodes are named `n0`, `n1`, ... (the names JetStream reports as stream leaders).
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes under `dir` (one sub-folder each). `extra` is added to every node's
    /// configuration (nats-server syntax).
    pub fn start(dir: &Path, size: usize, extra: &str) -> Result<NatsCluster, DevNatsError> {
        // Ports are chosen up front (every node's configuration names every route); a port
        // taken between the check and the start fails that start, and the whole start is tried
        // again with new ports.
        let mut last_error = None;
        for _ in 0..3 {
            let client: Vec<u16> = (0..size).map(|_| free_port()).collect::<Result<_, _>>()?;
            let route: Vec<u16> = (0..size).map(|_| free_port()).collect::<Result<_, _>>()?;
            let routes = route
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let mut nodes = Vec::new();
            let mut failed = None;
            for i in 0..size {
                let config = format!(
                    "server_name: n{i}\ncluster {{\n  name: jetwatch\n  listen: 127.0.0.1:{}\n  \
                     routes: [{routes}]\n}}\n{extra}\n",
                    route[i]
                );
                match NatsServer::start_with_config(&dir.join(format!("n{i}")), client[i], &config)
                {
                    Ok(node) => nodes.push(node),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            match failed {
                None => return Ok(NatsCluster { nodes }),
                Some(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or(DevNatsError::NotReady(
            Duration::from_secs(0),
            dir.display().to_string(),
        )))
    }

    /// Every node's client URL, comma-separated (what `nats.url` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node named `n<index>`.
    pub fn node(&mut self, index: usize) -> &mut NatsServer {
        &mut self.nodes[index]
    }

    /// The index of the node named `name` (`n1` is 1).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n')?
            .parse()
            .ok()
            .filter(|i| *i < self.nodes.len())
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

fn free_port() -> Result<u16, DevNatsError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_ports_file(dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}
