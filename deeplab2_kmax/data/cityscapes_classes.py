"""Cityscapes panoptic classes: train id, label id, name, thing / stuff, colour.

The 19 evaluated classes of the Cityscapes benchmark (cityscapesscripts'
`labels.py`), numbered by their train id as DeepLab2 trains on them: class k
of `cityscapes_panoptic` is train id k. The label id is what the official
ground truth and evaluation use (`createPanopticImgs` without train ids,
`*_labelIds.png`): the converter maps label ids to train ids, the prediction
writers map them back. Eight classes are things (person to bicycle), eleven
stuff. Colours are the benchmark's.
"""

S, T = False, True  # Stuff, thing.

# (train id, label id, name, is thing, RGB colour), one row per train id.
ROWS = (
    (0, 7, "road", S, (128, 64, 128)),
    (1, 8, "sidewalk", S, (244, 35, 232)),
    (2, 11, "building", S, (70, 70, 70)),
    (3, 12, "wall", S, (102, 102, 156)),
    (4, 13, "fence", S, (190, 153, 153)),
    (5, 17, "pole", S, (153, 153, 153)),
    (6, 19, "traffic light", S, (250, 170, 30)),
    (7, 20, "traffic sign", S, (220, 220, 0)),
    (8, 21, "vegetation", S, (107, 142, 35)),
    (9, 22, "terrain", S, (152, 251, 152)),
    (10, 23, "sky", S, (70, 130, 180)),
    (11, 24, "person", T, (220, 20, 60)),
    (12, 25, "rider", T, (255, 0, 0)),
    (13, 26, "car", T, (0, 0, 142)),
    (14, 27, "truck", T, (0, 0, 70)),
    (15, 28, "bus", T, (0, 60, 100)),
    (16, 31, "train", T, (0, 80, 100)),
    (17, 32, "motorcycle", T, (0, 0, 230)),
    (18, 33, "bicycle", T, (119, 11, 32)),
)

NAMES = tuple(name for _, _, name, _, _ in ROWS)
HAS_INSTANCES = tuple(is_thing for _, _, _, is_thing, _ in ROWS)
COLORMAP = tuple(colour for _, _, _, _, colour in ROWS)
# Train id (our class index) -> label id, and back.
TRAIN_ID_TO_LABEL_ID = tuple(label_id for _, label_id, _, _, _ in ROWS)
LABEL_ID_TO_TRAIN_ID = {label_id: train_id
                        for train_id, label_id, _, _, _ in ROWS}
