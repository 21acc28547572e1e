//! What PID 1 does to itself after pivoting, before serving: hostname,
//! loopback up, rlimits, no_new_privs, a landlock ruleset, every capability
//! dropped and a seccomp filter. Every command it runs inherits all of it.

use std::collections::BTreeMap;

use landlock::{Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, ABI};
use nix::sys::resource::{setrlimit, Resource};
use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch};

use super::SandboxConfig;

/// Syscalls that fail with EPERM inside a sandbox: mounts and namespaces,
/// tracing, kernel modules and kexec, host clock and identity, swap, BPF,
/// perf, keyrings, userfaultfd and file handles.
const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_lookup_dcookie,
    libc::SYS_vhangup,
];

/// `clone` flags that would make new namespaces.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// The seccomp filters, compiled: they depend on nothing in the config, so
/// a supervisor started ahead compiles them while it waits.
pub struct Filters(Vec<seccompiler::BpfProgram>);

/// Applies everything, in an order where each step still has the rights it needs.
pub fn apply(config: &SandboxConfig, filters: &Filters) -> Result<(), String> {
    nix::unistd::sethostname(&config.hostname).map_err(|e| format!("sethostname: {e}"))?;
    loopback_up()?;
    setrlimit(Resource::RLIMIT_NOFILE, config.nofile, config.nofile).map_err(|e| format!("rlimit nofile: {e}"))?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| format!("rlimit core: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    landlock()?;
    drop_capabilities()?;
    for program in &filters.0 {
        seccompiler::apply_filter(program).map_err(|e| format!("seccomp: {e:?}"))?;
    }
    Ok(())
}

/// Brings `lo` up in the new network namespace: the only interface there.
#[allow(unsafe_code)]
fn loopback_up() -> Result<(), String> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: valid socket and a properly sized ifreq for these ioctls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(format!("get lo flags: {}", std::io::Error::last_os_error()));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(format!("bring lo up: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Reads anywhere; writes only to `/workspace`, `/tmp`, `/dev/shm` and the
/// harmless device nodes.
fn landlock() -> Result<(), String> {
    let abi = ABI::V3;
    let fail = |e: &dyn std::fmt::Display| format!("landlock: {e}");
    let beneath = |path: &str, access| -> Result<PathBeneath<PathFd>, String> {
        Ok(PathBeneath::new(PathFd::new(path).map_err(|e| fail(&e))?, access))
    };
    let read = AccessFs::from_read(abi);
    let rules = vec![
        beneath("/", read)?,
        beneath("/workspace", AccessFs::from_all(abi))?,
        beneath("/tmp", AccessFs::from_all(abi))?,
        beneath("/dev/shm", AccessFs::from_all(abi))?,
        beneath("/dev", read | AccessFs::WriteFile)?,
    ];
    Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| fail(&e))?
        .create()
        .map_err(|e| fail(&e))?
        .add_rules(rules.into_iter().map(Ok::<_, landlock::RulesetError>))
        .map_err(|e| fail(&e))?
        .restrict_self()
        .map_err(|e| fail(&e))?;
    Ok(())
}

/// Empties the bounding, ambient, effective, permitted and inheritable sets.
#[allow(unsafe_code)]
fn drop_capabilities() -> Result<(), String> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } < 0 {
            return Err(format!("drop capability {cap} from the bounding set: {}", std::io::Error::last_os_error()));
        }
    }
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) };
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header { version: VERSION_3, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset with a v3 header and two data structs, as the ABI requires.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } < 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Two filters: [`DENIED`] and namespace-making `clone` calls fail with
/// EPERM; `clone3` (whose flags a filter cannot read) fails with ENOSYS so
/// that libc falls back to `clone`.
pub fn seccomp_filters() -> Result<Filters, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| format!("seccomp: {e:?}"))?;
    let fail = |e: &dyn std::fmt::Debug| format!("seccomp: {e:?}");
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_FLAGS {
        let flag = *flag as u64;
        let cond = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag).map_err(|e| fail(&e))?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(|e| fail(&e))?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch).map_err(|e| fail(&e))?;
    let clone3 =
        SeccompFilter::new([(libc::SYS_clone3, Vec::new())].into(), SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch)
            .map_err(|e| fail(&e))?;
    let mut programs = Vec::new();
    for filter in [deny, clone3] {
        programs.push(filter.try_into().map_err(|e| fail(&e))?);
    }
    Ok(Filters(programs))
}
