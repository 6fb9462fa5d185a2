"""Point the rosidl CMake exports of the PyPI ROS wheels at this interpreter.

The wheels bake the include directories of the machine that built them
(/opt/python/cp3XX-cp3XX/...) into share/*/cmake/*rosidl_generator_pyExport.cmake;
generating our messages needs this Python's headers and this venv's numpy.
"""
import glob
import os
import re
import sys
import sysconfig

import numpy

INCLUDE_DIRS = re.compile(r'(INTERFACE_INCLUDE_DIRECTORIES\s+")([^"]*)(")')


def _fix_dirs(match: re.Match) -> str:
    dirs = []
    for d in match.group(2).split(';'):
        if d and not os.path.isdir(d):
            if re.search(r'/include/python3\.\d+$', d):
                d = sysconfig.get_paths()['include']
            elif re.search(r'numpy/(_core|core)/include$', d):
                d = numpy.get_include()
        dirs.append(d)
    return match.group(1) + ';'.join(dirs) + match.group(3)


def main(venv: str) -> None:
    pattern = os.path.join(venv, 'share', '*', 'cmake', '*rosidl_generator_pyExport.cmake')
    for path in glob.glob(pattern):
        with open(path) as f:
            text = f.read()
        fixed = INCLUDE_DIRS.sub(_fix_dirs, text)
        if fixed != text:
            with open(path, 'w') as f:
                f.write(fixed)


if __name__ == '__main__':
    main(sys.argv[1])
