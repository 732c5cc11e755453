# DaViT-T Mask R-CNN 1x (paper: box AP 45.0, mask AP 41.1). Each level gets its own LayerNorm, as in the
# paper's dense backbone; DETR-style multi-scale AutoAugment training; AdamW lr 1e-4, wd 0.05.
_base_ = ['../_base_/mask-rcnn_vz_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_davit_tiny', drop_path_rate=0.1, out_norms=True),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
multi_scale = [(1333, short) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=multi_scale, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(4200, 400), (4200, 500), (4200, 600)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600), allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=multi_scale, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
