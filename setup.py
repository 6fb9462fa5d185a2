"""pip install for jetseg_core (pure PyTorch) and jetseg_ros (the rclpy node).

colcon builds this package with CMakeLists.txt (ament_cmake, for the messages);
this file serves `pip install .` and the README's scripts/setup.sh.
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'jetseg_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    description='JetSeg real-time semantic segmentation for ROS 2',
    license='Apache-2.0',
    python_requires='>=3.10',
    packages=find_packages(include=['jetseg_core', 'jetseg_core.*', 'jetseg_ros', 'jetseg_ros.*']),
    package_data={'jetseg_core': ['weights/*.safetensors']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml') + glob('config/*.xml')),
        (f'share/{PACKAGE}/rviz', glob('rviz/*.rviz')),
    ],
    # A range, not a pin: Jetson users keep NVIDIA's torch build.
    install_requires=['numpy', 'torch>=2.1', 'safetensors', 'pillow', 'pyyaml'],
    extras_require={'test': ['pytest<9'], 'video': ['opencv-python-headless'], 'bags': ['rosbags']},
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'segmentation_node = jetseg_ros.segmentation_node:main',
            'image_source = jetseg_ros.image_source:main',
            'jetseg-demo = jetseg_ros.demo:main',
            'jetseg-train = jetseg_core.train:main',
            'jetseg-eval = jetseg_core.evaluate:main',
            'jetseg-predict = jetseg_core.predict:main',
            'jetseg-complexity = jetseg_core.complexity:main',
            'jetseg-benchmark = jetseg_core.benchmark:main',
            'jetseg-export = jetseg_core.export:main',
        ],
    },
)
