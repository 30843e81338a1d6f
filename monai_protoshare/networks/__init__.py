"""Networks: the UM-ProtoShare family (paper §2.2, App. A, E, F)."""

from .backbone import FeatureBackbone
from .cnn import CNNClassifier, GAPClassifierHead
from .decoder import UNetStyleDecoder
from .encoder import ResNetEncoder
from .factory import MODEL_CONFIGURATIONS, build_network, model_names
from .fpn_iaia_bl import FPNIAIABL, FeaturePyramid, PyramidWarmupClassifier, focal_similarity
from .fusion import ConcatFusion, GatedFusion, MultiScaleFeatureFusion
from .layers import resize_trilinear
from .localisation import AddOn, MappingHead
from .pretrained import inflate_resnet2d_state_dict, load_imagenet_resnet, load_medicalnet_resnet
from .protonet import PrototypeNetwork, PrototypeOutput
from .prototypes import PrototypeBank, masked_descriptors
from .quadruplet_attention import QuadrupletAttention

__all__ = [
    "FPNIAIABL",
    "MODEL_CONFIGURATIONS",
    "AddOn",
    "CNNClassifier",
    "ConcatFusion",
    "FeatureBackbone",
    "FeaturePyramid",
    "GAPClassifierHead",
    "GatedFusion",
    "MappingHead",
    "MultiScaleFeatureFusion",
    "PrototypeBank",
    "PrototypeNetwork",
    "PrototypeOutput",
    "PyramidWarmupClassifier",
    "QuadrupletAttention",
    "ResNetEncoder",
    "UNetStyleDecoder",
    "build_network",
    "focal_similarity",
    "inflate_resnet2d_state_dict",
    "load_imagenet_resnet",
    "load_medicalnet_resnet",
    "masked_descriptors",
    "model_names",
    "resize_trilinear",
]
