"""The hospital's door: a DICOM node that a PACS routes hand films to, with the answer back in the film's own study.

    node        `boneage node`: C-STORE SCP (pynetdicom), a worker that answers, a sender that delivers
    queue       the node's memory on disk: inbox, outbox, sent, failed; safe against kill -9
    delivery    where answers go: C-STORE to a DICOM node, or STOW-RS to a DICOMweb server (dicomweb-client)
    answer      a DICOM film -> the one assessment -> its answer (or why it was not analysed)
    results     the answer as DICOM objects: a TID 1500 Structured Report and a Secondary Capture picture (highdicom);
                the one module that reads the assessment's record
    picture     the picture's pixels: the film, the answer, the SDS and the growth chart
    files       writes that a kill cannot leave half done

Like the CLI and the service, the node is a thin door to `boneage.assessment`: the same checks and the same number as
`boneage predict`; no Lightning or training code. Needs the `node` extra (pydicom, highdicom, pynetdicom,
dicomweb-client). What a PACS administrator needs: the README's "In the hospital" and docs/conformance.md.
"""
