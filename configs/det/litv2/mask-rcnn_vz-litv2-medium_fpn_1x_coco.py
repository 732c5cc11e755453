# LITv2-M Mask R-CNN 1x with stage-3 HiLo window 2 (paper: box AP 46.8, mask AP 42.3).
_base_ = ['./mask-rcnn_vz-litv2-small_fpn_1x_coco.py']
model = dict(backbone=dict(model_name='vz_litv2_medium'))
