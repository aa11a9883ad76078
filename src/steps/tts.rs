//! Placeholder: being written.

use super::{StepContext, StepOutput};
use crate::error::{ErrorCode, StepError};
use serde_json::Value;

pub async fn run(_payload: &Value, _ctx: &StepContext) -> Result<StepOutput, StepError> {
    Err(StepError::new(ErrorCode::Internal, "not built yet"))
}
