//! The container a process runs in, read from its `/proc/<pid>/cgroup`
//! (cgroups(7)): cgroup v1 lines `ID:CONTROLLERS:PATH` and the v2 line
//! `0::PATH`, with the cgroup names containerd, CRI-O and Docker give
//! containers under the systemd and cgroupfs drivers:
//!
//! - systemd: `.../kubepods-burstable-pod<uid, _ for ->.slice/cri-containerd-<id>.scope`
//!   (`crio-<id>.scope`, `docker-<id>.scope`)
//! - cgroupfs: `/kubepods/burstable/pod<uid>/<id>`, `/docker/<id>`

use std::fmt;
use std::str::FromStr;

/// The largest cgroup file read; real ones are a few hundred bytes.
pub const MAX_CGROUP_BYTES: usize = 64 * 1024;

/// Why a cgroup file or an id in it was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    #[error("cgroup file is over {MAX_CGROUP_BYTES} bytes")]
    TooLarge,
    #[error("cgroup file line {line} is not ID:CONTROLLERS:PATH")]
    Malformed { line: usize },
    #[error("cgroup file names two containers, {first} and {second}")]
    Ambiguous {
        first: ContainerId,
        second: ContainerId,
    },
    #[error("{value:?} is not a container id (64 lowercase hex digits)")]
    ContainerId { value: String },
    #[error("{value:?} is not a pod UID")]
    PodUid { value: String },
}

/// A container runtime's id for a container: 64 lowercase hex digits, as
/// containerd, CRI-O and Docker all use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId(String);

impl ContainerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for ContainerId {
    type Error = CgroupError;

    fn try_from(value: &str) -> Result<Self, CgroupError> {
        let hex = value.len() == 64
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if hex {
            Ok(ContainerId(value.to_owned()))
        } else {
            Err(CgroupError::ContainerId {
                value: value.chars().take(80).collect(),
            })
        }
    }
}

impl FromStr for ContainerId {
    type Err = CgroupError;

    fn from_str(s: &str) -> Result<Self, CgroupError> {
        ContainerId::try_from(s)
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pod's `metadata.uid`: a UUID, or for static pods the 32 hex digits of
/// the manifest's hash. Lowercase hex digits and dashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodUid(String);

impl PodUid {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for PodUid {
    type Error = CgroupError;

    fn try_from(value: &str) -> Result<Self, CgroupError> {
        let ok = (32..=36).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-');
        if ok {
            Ok(PodUid(value.to_owned()))
        } else {
            Err(CgroupError::PodUid {
                value: value.chars().take(80).collect(),
            })
        }
    }
}

impl FromStr for PodUid {
    type Err = CgroupError;

    fn from_str(s: &str) -> Result<Self, CgroupError> {
        PodUid::try_from(s)
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The container of a process and, under Kubernetes, its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: ContainerId,
    pub pod_uid: Option<PodUid>,
}

/// The container named by a cgroup file's text; `None` for a process
/// outside any container. Every line must agree on the container.
pub fn parse(text: &str) -> Result<Option<Container>, CgroupError> {
    if text.len() > MAX_CGROUP_BYTES {
        return Err(CgroupError::TooLarge);
    }
    let mut found: Option<Container> = None;
    for (index, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let mut fields = line.splitn(3, ':');
        let (Some(_id), Some(_controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(CgroupError::Malformed { line: index + 1 });
        };
        let Some(container) = from_path(path) else {
            continue;
        };
        match &mut found {
            None => found = Some(container),
            Some(first) if first.id != container.id => {
                return Err(CgroupError::Ambiguous {
                    first: first.id.clone(),
                    second: container.id,
                })
            }
            Some(first) => {
                if first.pod_uid.is_none() {
                    first.pod_uid = container.pod_uid;
                }
            }
        }
    }
    Ok(found)
}

/// The innermost container segment of one cgroup path, and the pod segment
/// above it if any. Innermost, since some runtimes (crun) put the process in
/// a child cgroup of the container's scope.
fn from_path(path: &str) -> Option<Container> {
    let segments: Vec<&str> = path.split('/').collect();
    let (at, id) = segments
        .iter()
        .enumerate()
        .rev()
        .find_map(|(at, segment)| container_segment(segment).map(|id| (at, id)))?;
    let pod_uid = segments[..at].iter().rev().find_map(|s| pod_segment(s));
    Some(Container { id, pod_uid })
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` or a
/// bare `<id>`. CRI-O's `crio-conmon-<id>.scope` is its monitor, not the
/// container, and is not matched.
fn container_segment(segment: &str) -> Option<ContainerId> {
    let id = match segment.strip_suffix(".scope") {
        Some(scope) => ["cri-containerd-", "crio-", "docker-"]
            .iter()
            .find_map(|prefix| scope.strip_prefix(prefix))?,
        None => segment,
    };
    ContainerId::try_from(id).ok()
}

/// `kubepods-<qos>-pod<uid>.slice` (systemd, which spells the uid's dashes
/// as underscores) or `pod<uid>` (cgroupfs).
fn pod_segment(segment: &str) -> Option<PodUid> {
    match segment.strip_suffix(".slice") {
        Some(slice) => {
            let (_, uid) = slice.rsplit_once("-pod")?;
            PodUid::try_from(uid.replace('_', "-").as_str()).ok()
        }
        None => PodUid::try_from(segment.strip_prefix("pod")?).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
    const ID2: &str = "f7c9d0e5b3c1a2947e6f8d0c5b4a3928e1f0d9c8b7a6958473625140fedcba98";
    const UID: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const UID_: &str = "2c48913c_b29f_11e7_9350_020968147796";
    const STATIC_UID: &str = "6f3d6c7b2b1a3e4f5a6b7c8d9e0f1a2b";

    fn v1(path: &str) -> String {
        // The controllers of a cgroup v1 host with the systemd hierarchy.
        [
            "12:hugetlb",
            "11:memory",
            "10:devices",
            "9:pids",
            "8:cpu,cpuacct",
            "7:net_cls,net_prio",
            "6:blkio",
            "5:freezer",
            "4:perf_event",
            "3:cpuset",
            "2:rdma",
            "1:name=systemd",
        ]
        .iter()
        .map(|c| format!("{c}:{path}\n"))
        .collect::<String>()
            + "0::/\n"
    }

    fn container(id: &str, uid: Option<&str>) -> Option<Container> {
        Some(Container {
            id: ContainerId::try_from(id).unwrap(),
            pod_uid: uid.map(|u| PodUid::try_from(u).unwrap()),
        })
    }

    #[test]
    fn real_world_formats() {
        let cases: Vec<(&str, String, Option<Container>)> = vec![
            (
                "v1 cgroupfs containerd",
                v1(&format!("/kubepods/burstable/pod{UID}/{ID}")),
                container(ID, Some(UID)),
            ),
            (
                "v1 cgroupfs guaranteed pod",
                v1(&format!("/kubepods/pod{UID}/{ID}")),
                container(ID, Some(UID)),
            ),
            (
                "v1 systemd containerd",
                v1(&format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                )),
                container(ID, Some(UID)),
            ),
            (
                "v1 systemd cri-o",
                v1(&format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                )),
                container(ID, Some(UID)),
            ),
            (
                "v1 systemd dockershim",
                v1(&format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope"
                )),
                container(ID, Some(UID)),
            ),
            (
                "v1 cgroupfs docker",
                v1(&format!("/docker/{ID}")),
                container(ID, None),
            ),
            (
                "v2 systemd containerd",
                format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"),
                container(ID, Some(UID)),
            ),
            (
                "v2 systemd guaranteed pod",
                format!("0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n"),
                container(ID, Some(UID)),
            ),
            (
                "v2 systemd cri-o with crun's child cgroup",
                format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope/container\n"),
                container(ID, Some(UID)),
            ),
            (
                "v2 cgroupfs containerd",
                format!("0::/kubepods/burstable/pod{UID}/{ID}\n"),
                container(ID, Some(UID)),
            ),
            (
                "v2 kind node (kubelet.slice)",
                format!("0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope\n"),
                container(ID, Some(UID)),
            ),
            (
                "v2 static pod (hash uid)",
                format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{ID}.scope\n"),
                container(ID, Some(STATIC_UID)),
            ),
            (
                "v2 systemd docker",
                format!("0::/system.slice/docker-{ID}.scope\n"),
                container(ID, None),
            ),
            (
                "v2 docker in docker: the innermost",
                format!("0::/docker/{ID2}/docker/{ID}\n"),
                container(ID, None),
            ),
            ("v2 login session", "0::/user.slice/user-1000.slice/session-2.scope\n".into(), None),
            ("v2 systemd service", "0::/system.slice/containerd.service\n".into(), None),
            ("v2 cgroup namespace root", "0::/\n".into(), None),
            ("v1 host process", v1("/system.slice/sshd.service"), None),
            (
                "v2 cri-o conmon is not the container",
                format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope\n"),
                None,
            ),
            (
                "uppercase hex is not an id",
                format!("0::/docker/{}\n", ID.to_uppercase()),
                None,
            ),
            ("empty file", String::new(), None),
        ];
        for (name, text, expected) in cases {
            assert_eq!(parse(&text), Ok(expected), "{name}");
        }
    }

    #[test]
    fn refused_files() {
        let two = format!("4:memory:/docker/{ID}\n3:pids:/docker/{ID2}\n");
        assert!(
            matches!(parse(&two), Err(CgroupError::Ambiguous { .. })),
            "{two}"
        );
        assert_eq!(
            parse("0::/\nnot a cgroup line\n"),
            Err(CgroupError::Malformed { line: 2 })
        );
        let huge = format!("0::/{}\n", "a".repeat(MAX_CGROUP_BYTES));
        assert_eq!(parse(&huge), Err(CgroupError::TooLarge));
        let at_limit = format!("0::/{}", "a".repeat(MAX_CGROUP_BYTES - 4));
        assert_eq!(parse(&at_limit), Ok(None));
    }

    #[test]
    fn ids_are_validated_newtypes() {
        assert_eq!(ID.parse::<ContainerId>().unwrap().to_string(), ID);
        for bad in [
            "",
            "abc",
            &ID[1..],
            &format!("{ID}0"),
            &ID.replace('9', "g"),
        ] {
            assert!(ContainerId::try_from(bad).is_err(), "{bad:?}");
        }
        assert_eq!(UID.parse::<PodUid>().unwrap().as_str(), UID);
        assert!(STATIC_UID.parse::<PodUid>().is_ok());
        for bad in ["", "pod", UID_, &format!("{UID}-0000")] {
            assert!(PodUid::try_from(bad).is_err(), "{bad:?}");
        }
    }
    /// Seeded mutations of real samples: every result is a container named
    /// in the text or a typed error, never a panic.
    #[test]
    fn mutated_files_never_panic() {
        let samples = [
            v1(&format!("/kubepods/burstable/pod{UID}/{ID}")),
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope/container\n"),
            format!("0::/system.slice/docker-{ID}.scope\n"),
        ];
        let alphabet = b"0123456789abcdef:/-_.\nkpodscrioxyz\xff";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            // A linear congruential generator (Knuth's MMIX constants).
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % n.max(1)
        };
        for round in 0..3000 {
            let mut bytes = samples[round % samples.len()].clone().into_bytes();
            for _ in 0..=next(6) {
                let at = next(bytes.len());
                match next(3) {
                    0 => bytes[at] = alphabet[next(alphabet.len())],
                    1 => bytes.insert(at, alphabet[next(alphabet.len())]),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(Some(container)) = parse(&text) {
                assert!(text.contains(container.id.as_str()), "{text}");
            }
        }
    }
}
