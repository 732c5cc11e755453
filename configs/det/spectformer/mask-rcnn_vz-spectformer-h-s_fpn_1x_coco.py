# Hierarchical SpectFormer-S Mask R-CNN 1x on COCO. The paper reports COCO detection and instance segmentation
# "comparable to the best backbones" but its table could not be checked and the official repository has no
# detection code (specs/spectformer.md section 6), so this config follows the zoo's common Mask R-CNN 1x
# (AdamW lr 2e-4, wd 1e-4, mixed precision). The spectral filters, learned on 224x224, are resampled to each
# image's grid by the documented rule (visionzoo.ops.spectral_gating.resize_spectral_filter).
_base_ = ['../_base_/mask-rcnn_vz_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_spectformer_h_s', model_kwargs=dict(aux_head=False)),
    neck=dict(in_channels=[64, 128, 320, 448]),
)
optim_wrapper = dict(type='AmpOptimWrapper', optimizer=dict(lr=2e-4, weight_decay=1e-4))
