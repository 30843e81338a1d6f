"""Raw DICOM studies and non-BraTS NIfTI to SRI24-registered, BraTS-2020-layout NIfTI.

Command line: ``python -m data_prep {prepare,batch,to-original,build-atlas} --help``. Modules:
:mod:`~data_prep.pipeline` (one case), :mod:`~data_prep.batch` (many), :mod:`~data_prep.dicom_ingest` and
:mod:`~data_prep.sequence_identification` (DICOM input), :mod:`~data_prep.registration`,
:mod:`~data_prep.skull_strip`, :mod:`~data_prep.quality`, :mod:`~data_prep.native_space` (back to the
original scan), :mod:`~data_prep.atlas` and :mod:`~data_prep.build_atlas` (the shipped SRI24 atlas),
:mod:`~data_prep.brats_layout` (output layout), :mod:`~data_prep.dicom_study_writer` and
:mod:`~data_prep.known_motion` (synthetic studies and known transforms for tests).
"""
