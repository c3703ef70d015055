//! A job's record in the membership store (`jobs/<id>`, JSON).

use psflow_proto::coordinator::{JobInfo, JobState};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobRecord {
    pub job_id: String,
    pub name: String,
    /// `pending`, `running`, `evaluating`, `succeeded`, `failed`,
    /// `cancelled`, `interrupted`.
    pub state: String,
    pub step: u64,
    pub steps: u64,
    pub workers: u32,
    pub workers_alive: u32,
    pub ps: u32,
    pub error: String,
    pub summary: Option<serde_json::Value>,
    pub submitted_at: f64,
    pub finished_at: f64,
}

impl Default for JobRecord {
    fn default() -> Self {
        JobRecord::from_info(&JobInfo::default())
    }
}

/// The lower-case name of a state.
pub fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Pending => "pending",
        JobState::Running => "running",
        JobState::Evaluating => "evaluating",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Interrupted => "interrupted",
    }
}

impl JobRecord {
    pub fn from_info(i: &JobInfo) -> JobRecord {
        JobRecord {
            job_id: i.job_id.clone(),
            name: i.name.clone(),
            state: state_name(i.state()).into(),
            step: i.step,
            steps: i.steps,
            workers: i.workers,
            workers_alive: i.workers_alive,
            ps: i.ps,
            error: i.error.clone(),
            summary: serde_json::from_str(&i.summary_json).ok(),
            submitted_at: i.submitted_at,
            finished_at: i.finished_at,
        }
    }

    pub fn to_info(&self) -> JobInfo {
        let state = [
            JobState::Pending,
            JobState::Running,
            JobState::Evaluating,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Interrupted,
        ]
        .into_iter()
        .find(|s| state_name(*s) == self.state)
        .unwrap_or(JobState::Interrupted);
        JobInfo {
            job_id: self.job_id.clone(),
            name: self.name.clone(),
            state: state as i32,
            step: self.step,
            steps: self.steps,
            workers: self.workers,
            workers_alive: self.workers_alive,
            ps: self.ps,
            error: self.error.clone(),
            summary_json: self
                .summary
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            submitted_at: self.submitted_at,
            finished_at: self.finished_at,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job record serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_json_and_info() {
        let mut info = JobInfo {
            job_id: "job-1".into(),
            step: 7,
            steps: 10,
            summary_json: r#"{"top1":0.5}"#.into(),
            ..Default::default()
        };
        info.set_state(JobState::Succeeded);
        let rec = JobRecord::from_info(&info);
        let back: JobRecord = serde_json::from_slice(&rec.to_json()).unwrap();
        assert_eq!(back, rec);
        let i2 = back.to_info();
        assert_eq!(i2.state(), JobState::Succeeded);
        assert_eq!(i2.step, 7);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&i2.summary_json).unwrap()["top1"],
            0.5
        );
    }
}
