# DiNAT-Large Cascade Mask R-CNN 3x (paper: box AP 55.3, mask AP 47.8): AdamW lr 7.5e-5, wd 0.05, drop path 0.6,
# the official config's per-layer dilations for COCO-sized inputs
# (SHI-Labs/Neighborhood-Attention-Transformer detection/configs). Each level gets its own LayerNorm.
# Starts from the IN-22k pre-training: --cfg-options model.backbone.init_cfg.checkpoint=<vz_dinat_large.in22k file>.
_base_ = ['../_base_/cascade-mask-rcnn_vz_fpn_3x_coco.py']
model = dict(
    backbone=dict(
        model_name='vz_dinat_large', drop_path_rate=0.6, out_norms=True,
        model_kwargs=dict(dilations=((1, 28, 1), (1, 7, 1, 14), (1, 3, 1, 5, 1, 7) * 3, (1, 3, 1, 3, 1))),
    ),
    neck=dict(in_channels=[192, 384, 768, 1536]),
)
optim_wrapper = dict(optimizer=dict(lr=7.5e-5))
