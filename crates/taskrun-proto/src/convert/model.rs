//! ModelBackend and ModelRequirement.

use taskrun_core::{ModelBackend, ModelRequirement};

use super::enums::{modalities_from_wire, modalities_to_wire};
use super::{Result, to_u32, wire_i32};
use crate::{InvalidMessage, pb};

impl From<ModelBackend> for pb::ModelBackend {
    fn from(b: ModelBackend) -> pb::ModelBackend {
        pb::ModelBackend {
            modalities: modalities_to_wire(&b.modalities),
            name: b.name,
            provider: b.provider,
            model_name: b.model_name,
            context_window: wire_i32(b.context_window),
            supports_streaming: b.supports_streaming,
        }
    }
}

impl TryFrom<pb::ModelBackend> for ModelBackend {
    type Error = InvalidMessage;
    fn try_from(b: pb::ModelBackend) -> Result<ModelBackend> {
        for (field, value) in [("name", &b.name), ("provider", &b.provider), ("model_name", &b.model_name)] {
            if value.is_empty() {
                return Err(InvalidMessage::Missing(field.into()));
            }
        }
        let backend = ModelBackend {
            context_window: to_u32("context_window", b.context_window, 1, None)?,
            modalities: modalities_from_wire("modalities", &b.modalities)?,
            name: b.name,
            provider: b.provider,
            model_name: b.model_name,
            supports_streaming: b.supports_streaming,
        };
        backend.validate().map_err(|e| InvalidMessage::from_validation("model_backend.", e))?;
        Ok(backend)
    }
}

impl From<ModelRequirement> for pb::ModelRequirement {
    fn from(r: ModelRequirement) -> pb::ModelRequirement {
        pb::ModelRequirement {
            modalities: modalities_to_wire(&r.modalities),
            provider: r.provider,
            model_name: r.model_name,
            min_context_window: r.min_context_window.map(wire_i32),
        }
    }
}

impl TryFrom<pb::ModelRequirement> for ModelRequirement {
    type Error = InvalidMessage;
    fn try_from(r: pb::ModelRequirement) -> Result<ModelRequirement> {
        for (field, value) in [("provider", &r.provider), ("model_name", &r.model_name)] {
            if value.as_deref() == Some("") {
                return Err(InvalidMessage::Inconsistent {
                    field: field.into(),
                    reason: "is set but empty (leave it unset to accept any)",
                });
            }
        }
        let requirement = ModelRequirement {
            min_context_window: r.min_context_window.map(|w| to_u32("min_context_window", w, 1, None)).transpose()?,
            modalities: modalities_from_wire("modalities", &r.modalities)?,
            provider: r.provider,
            model_name: r.model_name,
        };
        requirement.validate().map_err(|e| InvalidMessage::from_validation("model.", e))?;
        Ok(requirement)
    }
}
