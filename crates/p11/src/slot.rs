//! Slots, tokens and mechanisms: C_GetSlotList, C_GetSlotInfo,
//! C_GetTokenInfo, C_GetMechanismList, C_GetMechanismInfo. A slot is a
//! token of the enclave; the list is fetched again on each C_GetSlotList.

use cryptoki_sys::*;

use crate::general::pad;
use crate::mech;
use crate::state::Module;

/// C_GetSlotList: every slot, the list fetched from the enclave again.
pub(crate) fn slot_ids(m: &mut Module) -> Result<Vec<CK_SLOT_ID>, CK_RV> {
    m.refresh()?;
    Ok(m.slots.iter().map(|s| s.slot as CK_SLOT_ID).collect())
}

/// C_GetSlotInfo.
pub(crate) fn slot_info(m: &mut Module, slot: CK_SLOT_ID) -> Result<CK_SLOT_INFO, CK_RV> {
    let s = m.known_slot(slot)?;
    Ok(CK_SLOT_INFO {
        slotDescription: pad(&format!("nekms enclave token {}", s.label)),
        manufacturerID: pad("nekms"),
        flags: CKF_TOKEN_PRESENT | CKF_HW_SLOT,
        hardwareVersion: CK_VERSION { major: 0, minor: 1 },
        firmwareVersion: CK_VERSION { major: 0, minor: 1 },
    })
}

/// C_GetTokenInfo, from the slot's description fetched again (PIN state).
pub(crate) fn token_info(m: &mut Module, slot: CK_SLOT_ID) -> Result<CK_TOKEN_INFO, CK_RV> {
    m.fresh_slot(slot)?;
    let s = m.slot(slot).cloned().ok_or(CKR_SLOT_ID_INVALID)?;
    let sessions = m.sessions.values().filter(|x| x.slot == slot).count() as CK_ULONG;
    let mut flags = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED;
    if !s.writable {
        flags |= CKF_WRITE_PROTECTED;
    }
    if s.locked {
        flags |= CKF_USER_PIN_LOCKED;
    } else if s.failures > 0 {
        flags |= CKF_USER_PIN_COUNT_LOW;
    }
    Ok(CK_TOKEN_INFO {
        label: pad(&s.label),
        manufacturerID: pad("nekms"),
        model: pad("nekms-token"),
        serialNumber: pad(&format!("{:016x}", s.slot)),
        flags,
        ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
        ulSessionCount: sessions,
        ulMaxRwSessionCount: if s.writable { CK_EFFECTIVELY_INFINITE } else { 0 },
        ulRwSessionCount: 0,
        ulMaxPinLen: 64,
        ulMinPinLen: 4,
        ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
        ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
        ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
        ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
        hardwareVersion: CK_VERSION { major: 0, minor: 1 },
        firmwareVersion: CK_VERSION { major: 0, minor: 1 },
        utcTime: pad(""),
    })
}

/// C_GetMechanismList: the same mechanisms for every slot.
pub(crate) fn mechanisms(m: &mut Module, slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>, CK_RV> {
    m.known_slot(slot)?;
    Ok(mech::MECHANISMS.iter().map(|x| x.0).collect())
}

/// C_GetMechanismInfo.
pub(crate) fn mechanism_info(m: &mut Module, slot: CK_SLOT_ID, mechanism: CK_MECHANISM_TYPE) -> Result<CK_MECHANISM_INFO, CK_RV> {
    m.known_slot(slot)?;
    let (_, min, max, flags) = mech::MECHANISMS.iter().find(|x| x.0 == mechanism).ok_or(CKR_MECHANISM_INVALID)?;
    Ok(CK_MECHANISM_INFO { ulMinKeySize: *min, ulMaxKeySize: *max, flags: *flags })
}
