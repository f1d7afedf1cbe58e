"""The hospital's door: bone age for a PACS, with the answer back in the film's own study as DICOM objects.

    answer      a DICOM film -> the one assessment -> its answer (or why it was not analysed)
    results     the answer as DICOM objects: a TID 1500 Structured Report and a Secondary Capture picture (highdicom);
                the one module that reads the assessment's record
    picture     the picture's pixels: the film, the answer, the SDS and the growth chart
    files       writes that a kill cannot leave half done

Needs the `node` extra (pydicom, highdicom, pynetdicom, dicomweb-client). Conformance: docs/conformance.md.
"""
