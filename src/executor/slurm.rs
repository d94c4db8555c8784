//! Slurm behind [`Scheduler`], through its command-line tools (the interface that is stable
//! across Slurm releases; slurmrestd's API versions come and go). Tested against Slurm 22.05
//! (Debian's `slurm-wlm`) by tests/it/slurm.rs on a single-node cluster that
//! `scripts/slurm.sh` starts.
//! - submit: `sbatch --parsable --job-name … -o … -e … [--partition/--account/--qos]
//!   [--cpus-per-task/--gpus/--mem/--time] --export=ALL[,NAME=VALUE…] EXTRA… --wrap 'exec …'`;
//!   `--parsable` prints `ID` or `ID;CLUSTER`. A refusal (more CPUs than a partition allows,
//!   an unknown gres, memory no node has, a bad account or partition) is sbatch's non-zero
//!   exit and its stderr, quoted.
//! - state: `scontrol show job -o ID` (`JobState=`, `ExitCode=code:signal`) while Slurm keeps
//!   the job (`MinJobAge`, 300 s by default); after that `sacct` (with slurmdbd) or `sacct -c`
//!   (the job completion file, without it).
//! - interrupt: `scancel --signal=INT --batch ID` (the batch step runs `exec PROGRAM`, so the
//!   program itself gets the signal); cancel: `scancel ID`.
use std::process::Command;

use super::cluster::{JobEnd, JobState, Scheduler, Submission};
use crate::spec::SlurmParams;

/// The Slurm client of one spec's `slurm:` section.
#[derive(Debug, Clone)]
pub struct Slurm {
    params: SlurmParams,
}

impl Slurm {
    pub fn new(params: &SlurmParams) -> Slurm {
        Slurm { params: params.clone() }
    }

    /// The `sbatch` arguments of a submission (without the program name).
    pub fn sbatch_args(&self, s: &Submission<'_>) -> Vec<String> {
        let p = &self.params;
        let mut a = vec![
            "--parsable".to_string(),
            format!("--job-name=self-redteam-{}", s.node),
            format!("--output={}", s.stdout.display()),
            format!("--error={}", s.stderr.display()),
        ];
        for (flag, v) in [("partition", &p.partition), ("account", &p.account), ("qos", &p.qos)] {
            if let Some(v) = v {
                a.push(format!("--{flag}={v}"));
            }
        }
        let r = p.resources_of(s.stage);
        if let Some(n) = r.cpus {
            a.push(format!("--cpus-per-task={n}"));
        }
        if let Some(n) = r.gpus.filter(|n| *n > 0) {
            a.push(format!("--gpus={n}"));
        }
        if let Some(m) = &r.mem {
            a.push(format!("--mem={m}"));
        }
        if let Some(t) = &r.time {
            a.push(format!("--time={t}"));
        }
        let mut export = "ALL".to_string();
        for (k, v) in &p.env {
            export.push_str(&format!(",{k}={v}"));
        }
        a.push(format!("--export={export}"));
        a.extend(p.extra_args.iter().cloned());
        let cmd: Vec<String> = s.command.iter().map(|w| shell_quote(w)).collect();
        a.push(format!("--wrap=exec {}", cmd.join(" ")));
        a
    }
}

/// `w` as one shell word.
fn shell_quote(w: &str) -> String {
    if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "/._-@=:,+".contains(c)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// Run a Slurm tool; its stdout, or an error quoting its stderr (or why it did not start).
fn tool(program: &str, args: &[String]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("cannot run {program}: {e} (are Slurm's client tools on PATH?)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(if err.is_empty() { format!("{program} exited with {}", out.status) } else { err })
    }
}

/// A Slurm job state name (`CANCELLED by 0` included) and `ExitCode` (`code:signal`) as a
/// [`JobState`].
pub fn parse_state(state: &str, exit_code: &str) -> JobState {
    let word = state.split_whitespace().next().unwrap_or("").trim_end_matches('+');
    let (code, signal) = exit_code.split_once(':').map_or((0, 0), |(c, s)| (c.parse().unwrap_or(0), s.parse().unwrap_or(0)));
    match word {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" | "SUSPENDED" | "STOPPED" => JobState::Queued,
        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" | "RESIZING" => JobState::Running,
        "COMPLETED" => JobState::Ended(JobEnd::Completed),
        "FAILED" => JobState::Ended(JobEnd::Failed { code, signal }),
        "CANCELLED" => JobState::Ended(JobEnd::Cancelled),
        "TIMEOUT" => JobState::Ended(JobEnd::Timeout),
        "OUT_OF_MEMORY" => JobState::Ended(JobEnd::OutOfMemory),
        "NODE_FAIL" => JobState::Ended(JobEnd::NodeFail),
        "PREEMPTED" => JobState::Ended(JobEnd::Preempted),
        other => JobState::Ended(JobEnd::Other(other.to_string())),
    }
}

/// `JobState` and `ExitCode` of `scontrol show job -o` output.
fn parse_scontrol(text: &str) -> Option<JobState> {
    let field = |name: &str| text.split_whitespace().find_map(|kv| kv.strip_prefix(name)).map(str::to_string);
    let state = field("JobState=")?;
    Some(parse_state(&state, &field("ExitCode=").unwrap_or_default()))
}

/// The line of `sacct -P -n -o JobID,State,ExitCode` output for job `id`.
fn parse_sacct(text: &str, id: &str) -> Option<JobState> {
    text.lines().find_map(|l| {
        let mut f = l.split('|');
        if f.next()? != id {
            return None;
        }
        let state = f.next()?;
        Some(parse_state(state, f.next().unwrap_or("")))
    })
}

impl Scheduler for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn submit(&self, s: &Submission<'_>) -> Result<String, String> {
        let out = tool("sbatch", &self.sbatch_args(s))?;
        let id = out.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
            return Err(format!("sbatch --parsable printed {:?}, not a job id", out.trim()));
        }
        Ok(id)
    }

    fn state(&self, id: &str) -> Result<JobState, String> {
        if let Ok(out) = tool("scontrol", &["show".into(), "job".into(), "-o".into(), id.into()]) {
            if let Some(s) = parse_scontrol(&out) {
                return Ok(s);
            }
        }
        // Purged from the controller's memory: accounting, or the job completion file.
        let args = |c: bool| {
            let mut a: Vec<String> = if c { vec!["-c".into()] } else { Vec::new() };
            a.extend(["-j".into(), id.into(), "-P".into(), "-n".into(), "-o".into(), "JobID,State,ExitCode".into()]);
            a
        };
        let mut last = String::new();
        for c in [false, true] {
            match tool("sacct", &args(c)) {
                Ok(out) => {
                    if let Some(s) = parse_sacct(&out, id) {
                        return Ok(s);
                    }
                    last = format!("sacct{} has no record of job {id}", if c { " -c" } else { "" });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn interrupt(&self, id: &str) -> Result<(), String> {
        tool("scancel", &["--signal=INT".into(), "--batch".into(), id.into()]).map(|_| ())
    }

    fn cancel(&self, id: &str) -> Result<(), String> {
        tool("scancel", &[id.to_string()]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SlurmResources;

    #[test]
    fn every_end_state_is_named() {
        assert_eq!(parse_state("PENDING", "0:0"), JobState::Queued);
        assert_eq!(parse_state("COMPLETING", "0:0"), JobState::Running);
        assert_eq!(parse_state("FAILED", "3:0"), JobState::Ended(JobEnd::Failed { code: 3, signal: 0 }));
        assert_eq!(parse_state("FAILED", "0:11"), JobState::Ended(JobEnd::Failed { code: 0, signal: 11 }));
        assert_eq!(parse_state("CANCELLED by 0", "0:15"), JobState::Ended(JobEnd::Cancelled));
        for (s, e) in [("TIMEOUT", JobEnd::Timeout), ("OUT_OF_MEMORY", JobEnd::OutOfMemory), ("NODE_FAIL", JobEnd::NodeFail), ("PREEMPTED", JobEnd::Preempted)]
        {
            assert_eq!(parse_state(s, "0:0"), JobState::Ended(e));
        }
        assert_eq!(parse_state("BOOT_FAIL", "0:0"), JobState::Ended(JobEnd::Other("BOOT_FAIL".into())));
    }

    #[test]
    fn scontrol_and_sacct_output_are_read() {
        let line = "JobId=12 JobName=x UserId=root(0) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0 RunTime=00:00:01";
        assert_eq!(parse_scontrol(line), Some(JobState::Ended(JobEnd::Failed { code: 3, signal: 0 })));
        assert_eq!(parse_scontrol("slurm_load_jobs error: Invalid job id specified"), None);
        assert_eq!(parse_sacct("11|COMPLETED|0:0\n12|TIMEOUT|0:0\n", "12"), Some(JobState::Ended(JobEnd::Timeout)));
        assert_eq!(parse_sacct("112|COMPLETED|0:0\n", "12"), None);
    }

    #[test]
    fn sbatch_gets_the_stage_resources_and_a_quoted_command() {
        let mut p = SlurmParams { partition: Some("gpu".into()), ..SlurmParams::default() };
        p.resources.insert("update".into(), SlurmResources { cpus: Some(8), gpus: Some(1), mem: Some("64G".into()), time: Some("4:00:00".into()) });
        p.env.insert("HF_HOME".into(), "/scratch/hf".into());
        let s = Slurm::new(&p);
        let sub = |stage| Submission {
            node: "update@1",
            stage,
            command: vec!["/opt/sr/self-redteam-compute".into(), "exec".into(), "/store/.cluster/jobs/job it's.json".into()],
            stdout: "/l/o".into(),
            stderr: "/l/e".into(),
        };
        let a = s.sbatch_args(&sub("update"));
        for want in ["--partition=gpu", "--cpus-per-task=8", "--gpus=1", "--mem=64G", "--time=4:00:00", "--export=ALL,HF_HOME=/scratch/hf"] {
            assert!(a.contains(&want.to_string()), "{want} not in {a:?}");
        }
        assert_eq!(a.last().expect("wrap"), r"--wrap=exec /opt/sr/self-redteam-compute exec '/store/.cluster/jobs/job it'\''s.json'");
        let b = s.sbatch_args(&sub("prep"));
        assert!(b.contains(&"--cpus-per-task=2".to_string()) && !b.iter().any(|x| x.starts_with("--gpus")), "default resources: {b:?}");
    }
}
