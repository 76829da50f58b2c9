//! Why injection refuses an object: one error per thing it cannot handle, each message telling
//! the user what to change. `meshctl inject` prints them after the object's name; the admission
//! webhook denies the pod with them.

/// A pod (template) the sidecar cannot be added to, or options that make no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// A `bulwark.dev/*` annotation whose value cannot be used.
    #[error("annotation {annotation}: {problem}, got {value}")]
    BadAnnotation {
        annotation: &'static str,
        /// The value as written, quoted when it is a string (`"abc"`), else as JSON (`15100`).
        value: String,
        problem: &'static str,
    },
    /// A `bulwark.dev/inject` label (on the pod) whose value cannot be used.
    #[error("label {label}: {problem}, got {value}")]
    BadLabel {
        label: &'static str,
        value: String,
        problem: &'static str,
    },
    /// An [`InjectOptions`](crate::InjectOptions) value that cannot be used (the caller's
    /// configuration: meshctl flags, the webhook's flags).
    #[error("invalid {option}: {problem}, got {value:?}")]
    BadOption {
        option: &'static str,
        value: String,
        problem: &'static str,
    },
    /// One of the pod's own containers declares a port the sidecar listens on.
    #[error(
        "container {container:?} already uses port {port}, which the Bulwark sidecar needs; \
         set {annotation} to another port"
    )]
    PortInUse {
        container: String,
        port: u16,
        /// The annotation that moves the sidecar off this port.
        annotation: &'static str,
    },
    /// Two of the sidecar's three ports were given the same number.
    #[error("{first} and {second} are both {port}; the sidecar needs three different ports")]
    PortsCollide {
        first: &'static str,
        second: &'static str,
        port: u16,
    },
    /// The memory request is larger than the memory limit (the API server would reject the
    /// pod).
    #[error(
        "bulwark.dev/memory-request ({request}) is larger than bulwark.dev/memory-limit ({limit})"
    )]
    RequestAboveLimit { request: String, limit: String },
    /// Pods on the host's network share the node's ports: every injected pod on a node would
    /// fight over 15000/15001/15006.
    #[error(
        "the pod uses the host's network (spec.hostNetwork: true), where the sidecar's ports \
         would collide with other pods on the node; annotate it with bulwark.dev/inject: disabled"
    )]
    HostNetwork,
    /// An application container already has the name of a container injection adds.
    #[error(
        "{list} already has a container named {name:?}, a name Bulwark's injection needs; \
         rename that container"
    )]
    ContainerNameTaken {
        /// `spec.containers` (or the workload's path to it).
        list: String,
        /// `bulwark-sidecar` or `bulwark-init`.
        name: &'static str,
    },
    /// With capture, the sidecar's uid is what the rules leave alone: an app container running
    /// as that uid would bypass the sidecar without anyone noticing.
    #[error(
        "container {container:?} runs as uid {uid}, the Bulwark sidecar's, whose traffic is never \
         captured; run it as another user or set bulwark.dev/capture: disabled"
    )]
    RunsAsSidecarUid { container: String, uid: u32 },
    /// A volume of the pod already has the name of one of the sidecar's and is not it.
    #[error(
        "{list} already has a volume named \"{name}\" that is not the sidecar's; \
         rename that volume, the Bulwark sidecar needs the name"
    )]
    VolumeNameTaken { list: String, name: String },
    /// Neither a label, an annotation nor a name says which service the pod belongs to.
    #[error(
        "cannot tell which service this pod belongs to: set the label app.kubernetes.io/name \
         or the annotation bulwark.dev/service"
    )]
    NoService,
    /// The object does not have the shape its kind requires.
    #[error("{path}: {problem}")]
    Malformed { path: String, problem: &'static str },
}

impl InjectError {
    pub(crate) fn malformed(path: impl Into<String>, problem: &'static str) -> Self {
        InjectError::Malformed {
            path: path.into(),
            problem,
        }
    }
}
