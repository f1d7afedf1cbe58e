-- Orthanc: send every new DX or CR image of a hand (or of an unnamed body part) to the bone-age node.
-- The answers come back as SR and OT series, which this does not route again.
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality'] or ''
  local part = string.upper(tags['BodyPartExamined'] or '')
  if (modality == 'DX' or modality == 'CR') and
     (part == '' or string.find(part, 'HAND') or string.find(part, 'WRIST')) then
    SendToModality(instanceId, 'BONEAGE')
  end
end
