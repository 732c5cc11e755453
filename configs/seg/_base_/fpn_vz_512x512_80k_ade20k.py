# Semantic FPN, 80k iterations on ADE20K at 512x512 with a visionzoo backbone (2 images/GPU x 8 GPUs).
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_80k.py',
]
# ImageNet weights come from --cfg-options model.backbone.init_cfg.checkpoint=PATH.
custom_imports = dict(imports=['visionzoo.mm'], allow_failed_imports=False)
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(_delete_=True, type='VisionZooBackbone', model_name=None, init_cfg=dict(type='Pretrained')),
    neck=dict(in_channels=None),
    decode_head=dict(num_classes=150),
)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='ZooOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0),
)
# Poly decay (power 0.9) over 80k iterations: the Semantic FPN schedule of PVT that LITv2 reuses.
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=0, end=80000)]
train_dataloader = dict(batch_size=2)
