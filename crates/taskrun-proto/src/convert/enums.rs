//! Enums: core <-> wire. On the wire an enum field is an `i32`; zero
//! (UNSPECIFIED) counts as missing and a number this version does not know
//! is refused.

use taskrun_core::{Modality, RunStatus, TaskStatus, WorkerState};

use super::Result;
use crate::{FieldPath, InvalidMessage, pb};

macro_rules! wire_enum {
    (
        $(#[$doc:meta])*
        $core:ident, $from_wire:ident, $field:literal,
        [$($variant:ident),+ $(,)?]
    ) => {
        impl From<$core> for pb::$core {
            fn from(value: $core) -> pb::$core {
                match value {
                    $($core::$variant => pb::$core::$variant),+
                }
            }
        }

        /// UNSPECIFIED is refused as missing, named by the type's field
        /// name; use the `*_from_wire` function to name the field yourself.
        impl TryFrom<pb::$core> for $core {
            type Error = InvalidMessage;
            fn try_from(value: pb::$core) -> Result<$core> {
                match value {
                    pb::$core::Unspecified => Err(InvalidMessage::Missing($field.into())),
                    $(pb::$core::$variant => Ok($core::$variant)),+
                }
            }
        }

        $(#[$doc])*
        pub fn $from_wire(field: impl Into<FieldPath>, value: i32) -> Result<$core> {
            let field = field.into();
            match pb::$core::try_from(value) {
                Ok(pb::$core::Unspecified) => Err(InvalidMessage::Missing(field)),
                $(Ok(pb::$core::$variant) => Ok($core::$variant),)+
                Err(_) => Err(InvalidMessage::UnknownEnum { field, value }),
            }
        }
    };
}

wire_enum!(
    /// A wire `TaskStatus` (as carried in a message field) at `field`.
    TaskStatus, task_status_from_wire, "task_status",
    [Pending, Running, Completed, Failed, Cancelled]
);

wire_enum!(
    /// A wire `RunStatus` (as carried in a message field) at `field`.
    RunStatus, run_status_from_wire, "run_status",
    [Pending, Assigned, Running, Completed, Failed, Cancelled]
);

wire_enum!(
    /// A wire `Modality` (as carried in a message field) at `field`.
    Modality, modality_from_wire, "modality",
    [Text, Image, Audio]
);

wire_enum!(
    /// A wire `WorkerState` (as carried in a message field) at `field`.
    WorkerState, worker_state_from_wire, "worker_state",
    [Connected, Draining, Lost, Revoked]
);

/// Modalities from the wire: each known, none twice.
pub(super) fn modalities_from_wire(field: &'static str, values: &[i32]) -> Result<Vec<Modality>> {
    let mut out = Vec::with_capacity(values.len());
    for (i, &value) in values.iter().enumerate() {
        let modality = modality_from_wire(super::indexed(field, i), value)?;
        if out.contains(&modality) {
            return Err(InvalidMessage::Duplicate { field: super::indexed(field, i), value: modality.to_string() });
        }
        out.push(modality);
    }
    Ok(out)
}

pub(super) fn modalities_to_wire(values: &[Modality]) -> Vec<i32> {
    values.iter().map(|&m| i32::from(pb::Modality::from(m))).collect()
}
