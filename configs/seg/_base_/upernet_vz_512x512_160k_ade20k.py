# UperNet, 160k iterations on ADE20K at 512x512 with a visionzoo backbone (2 images/GPU x 8 GPUs).
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
# ImageNet weights come from --cfg-options model.backbone.init_cfg.checkpoint=PATH.
custom_imports = dict(imports=['visionzoo.mm'], allow_failed_imports=False)
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(_delete_=True, type='VisionZooBackbone', model_name=None, init_cfg=dict(type='Pretrained')),
    decode_head=dict(in_channels=None, num_classes=150),
    auxiliary_head=dict(in_channels=None, in_index=2, num_classes=150),
)

# AdamW with poly decay (power 1.0) after a 1500-iteration linear warm-up, as the UperNet recipes of the papers.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='ZooOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]
train_dataloader = dict(batch_size=2)
