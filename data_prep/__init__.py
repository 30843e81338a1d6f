"""Raw DICOM studies and non-BraTS NIfTI to SRI24-registered, BraTS-2020-layout NIfTI."""
